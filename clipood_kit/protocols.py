"""Evaluation protocols of CLIPood (Sec. 4) on any dataset, one experiment object for all of them.

Every protocol trains on (source domains) x (training classes) and scores the same grid of cells:
(train domains: held-out images of the source domains | unseen domains: the target domains, and each domain)
x (base: base images against base names | new: new images against new names | all: all images against all
names | H: harmonic mean of base and new). The protocol picks the training classes and the headline:

- `domain-shift` (DomainBed leave-domains-out): all classes are trained; headline: unseen domains x all.
- `base-to-new`: base classes trained, every domain a source; headline: base, new, H on held-out images.
- `in-the-wild`: base classes of the source domains trained; headline: unseen domains x all classes.
- `open-world` (the demo): base classes of the source domains; every cell is reported.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from . import evaluation, ood
from .data import WORLD, TransformedSubset, open_dataset, splits
from .io import save_weights, write_json
from .methods import MethodConfig, build_method, with_average
from .models.loader import TINY_NAME, load_clip
from .training import FineTuneOutput, TrainConfig, fine_tune
from .zeroshot import default_templates

PROTOCOLS = ("domain-shift", "base-to-new", "in-the-wild", "open-world")
WORLD_SOURCES = ("photo", "sketch")


@dataclass
class ExperimentConfig:
    model: str = TINY_NAME
    pretrained: Optional[str] = "default"
    data: str = WORLD
    per_cell: int = 40                       # world only
    data_seed: int = 0                       # world only: seed of the images
    protocol: str = "open-world"
    source_domains: Optional[List[str]] = None   # default: world photo+sketch; folders: all but the last
    shots: Optional[int] = None              # k images per class and source domain (None: all)
    holdout_fraction: float = 0.2            # held-out share of every source domain (in-domain test)
    split_seed: int = 0
    templates: Optional[List[str]] = None
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int = 256
    device: str = "cpu"

    def __post_init__(self):
        if isinstance(self.method, dict):
            self.method = MethodConfig(**self.method)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


@dataclass
class Setup:
    """Everything a protocol fixes before training: data, splits, classes, the zero-shot model."""

    cfg: ExperimentConfig
    loaded: object
    dataset: object
    train_idx: torch.Tensor
    eval_idx: torch.Tensor
    domain_pools: List[torch.Tensor]
    source_ids: List[int]
    target_ids: List[int]
    base_ids: List[int]
    new_ids: List[int]
    train_class_ids: List[int]
    text_features: torch.Tensor              # all classes, C x D
    templates: List[str]
    zero_shot_state: Dict[str, torch.Tensor]

    @property
    def logit_scale(self) -> float:
        return self.loaded.model.logit_scale.detach().exp().item()

    def describe(self) -> dict:
        d = self.dataset
        return {
            "dataset": d.describe(), "protocol": self.cfg.protocol,
            "source_domains": [d.domains[i] for i in self.source_ids],
            "target_domains": [d.domains[i] for i in self.target_ids],
            "base_classes": [d.classes[i] for i in self.base_ids], "new_classes": [d.classes[i] for i in self.new_ids],
            "train_images": len(self.train_idx), "eval_images": len(self.eval_idx), "templates": self.templates,
            "model_id": self.loaded.model_id, "logit_scale": self.logit_scale,
        }


def prepare(cfg: ExperimentConfig, progress: bool = False) -> Setup:
    loaded = load_clip(cfg.model, cfg.pretrained, device=cfg.device)
    dataset = open_dataset(cfg.data, cfg.per_cell, cfg.data_seed)
    names = dataset.domains
    if cfg.source_domains is None:
        sources = list(WORLD_SOURCES) if cfg.data == WORLD else names[:-1]
    else:
        sources = list(cfg.source_domains)
    unknown = [s for s in sources if s not in names]
    if unknown:
        raise ValueError(f"source domain(s) {unknown} not in the dataset; its domains are {names}")
    if cfg.protocol == "base-to-new":
        sources = list(names)
    source_ids = [names.index(s) for s in sources]
    target_ids = [i for i in range(len(names)) if i not in source_ids]
    if cfg.protocol != "base-to-new" and not target_ids:
        raise ValueError(f"protocol {cfg.protocol} needs at least one unseen domain; the sources are all of {names}")

    if cfg.protocol == "domain-shift":
        base_ids, new_ids = list(range(len(dataset.classes))), []
    else:
        base_ids, new_ids = dataset.base_new_split()
    if target_ids:
        in_source, targets = splits.domain_split(dataset.domain_ids, target_ids)
    else:
        in_source, targets = torch.arange(len(dataset)), torch.empty(0, dtype=torch.long)
    kept, held = splits.holdout_split(dataset.domain_ids, cfg.holdout_fraction, cfg.split_seed, indices=in_source)
    train_idx = splits.select_classes(dataset.labels, base_ids, kept)
    if cfg.shots is not None:
        train_idx = torch.cat([splits.k_shot(dataset.labels, cfg.shots, cfg.split_seed,
                                             train_idx[dataset.domain_ids[train_idx] == d]) for d in source_ids]).sort().values
    eval_idx = torch.cat([held, targets]).sort().values
    train_domains = dataset.domain_ids[train_idx]
    pools = [(train_domains == d).nonzero().squeeze(1) for d in source_ids]
    templates = cfg.templates or default_templates(cfg.model, cfg.data)
    text = evaluation.text_classifier(loaded.model, loaded.tokenizer, dataset.classes, templates, cfg.device).cpu()
    zero_shot = {k: v.detach().clone() for k, v in loaded.model.visual.state_dict().items()}
    return Setup(cfg, loaded, dataset, train_idx, eval_idx, pools, source_ids, target_ids, base_ids, new_ids,
                 base_ids, text, templates, zero_shot)


def score(setup: Setup, features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
          local_mcm: Optional[torch.Tensor] = None) -> dict:
    """Accuracy (%) of every cell: {domain group or domain: {base, new, all, H}}, and 'ood' (see ood_detection);
    `local_mcm` (ViT towers, from encode_with_state) adds GL-MCM to the OOD scores."""
    d = setup.dataset
    groups = {"train domains": setup.source_ids, "unseen domains": setup.target_ids}
    groups.update({name: [i] for i, name in enumerate(d.domains)})
    classes = {"base": setup.base_ids, "new": setup.new_ids, "all": list(range(len(d.classes)))}
    out = {}
    for gname, dom_ids in groups.items():
        if not dom_ids:
            continue
        in_group = torch.isin(domains, torch.tensor(dom_ids))
        cells = {}
        for cname, cls_ids in classes.items():
            if not cls_ids:
                continue
            m = in_group & torch.isin(labels, torch.tensor(cls_ids))
            if m.any():
                pred = evaluation.classify(features[m], setup.text_features, cls_ids)
                cells[cname] = 100.0 * (pred == labels[m]).float().mean().item()
        if "base" in cells and "new" in cells:
            cells["H"] = harmonic_mean(cells["base"], cells["new"])
        out[gname] = cells
    detection = ood_detection(setup, features, labels, domains, local_mcm)
    if detection:
        out["ood"] = detection
    return out


OOD_SHIFTS = {"semantic": ("source", "new"), "covariate": ("target", "base"), "both": ("target", "new")}


def ood_sets(setup: Setup, labels: torch.Tensor, domains: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Masks of the OOD-detection image sets that have images: 'ID' (the training distribution: held-out images
    of the source domains, base classes) and each shift of OOD_SHIFTS (semantic = new classes in the source
    domains, covariate = base classes in unseen domains, both = new classes in unseen domains)."""
    out = {}
    for name, (where, classes) in {"ID": ("source", "base"), **OOD_SHIFTS}.items():
        dom_ids = setup.source_ids if where == "source" else setup.target_ids
        cls_ids = setup.base_ids if classes == "base" else setup.new_ids
        if dom_ids and cls_ids:
            m = torch.isin(domains, torch.tensor(dom_ids)) & torch.isin(labels, torch.tensor(cls_ids))
            if m.any():
                out[name] = m
    return out


def ood_detection(setup: Setup, features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                  local_mcm: Optional[torch.Tensor] = None) -> dict:
    """OOD detection of every shift against the training distribution (the sets of `ood_sets`), from cosines to
    the base class text features: every score x metric (%)."""
    sets = ood_sets(setup, labels, domains)
    in_dist = sets.pop("ID", None)
    if in_dist is None:
        return {}
    cos = features @ setup.text_features[setup.base_ids].T
    out = {}
    for shift, m in sets.items():
        local = (None, None) if local_mcm is None else (local_mcm[in_dist], local_mcm[m])
        out[shift] = ood.evaluate(cos[in_dist], cos[m], setup.logit_scale, *local)
    return out


def ood_score_sets(setup: Setup, encoder_state: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per-image OOD scores under an encoder state: {'ID' or a shift of OOD_SHIFTS: {score: values}}, the same
    sets and scores as `ood_detection` (the OOD notebook's histograms and ROC curves)."""
    enc = encode_with_state(setup, encoder_state)
    cos = enc["features"] @ setup.text_features[setup.base_ids].T
    scores = ood.all_scores(cos, setup.logit_scale, enc.get("local_mcm"))
    return {name: {score: values[m] for score, values in scores.items()}
            for name, m in ood_sets(setup, enc["labels"], enc["domains"]).items()}


def encode_with_state(setup: Setup, encoder_state: Dict[str, torch.Tensor], indices: Optional[torch.Tensor] = None,
                      progress: bool = False) -> Dict[str, torch.Tensor]:
    """Image features of the evaluation images (or the given dataset indices) under an image-encoder state;
    the setup's model gets its own encoder weights back afterwards. ViT towers also give 'local_mcm' (GL-MCM's
    local part against the base classes)."""
    model = setup.loaded.model
    original = {k: v.clone() for k, v in model.visual.state_dict().items()}
    model.visual.load_state_dict(encoder_state)
    subset = setup.eval_idx if indices is None else indices
    try:
        local = setup.text_features[setup.base_ids] if evaluation.has_local_features(model.visual) else None
        return evaluation.encode_images(model, TransformedSubset(setup.dataset, subset, setup.loaded.preprocess),
                                        setup.cfg.eval_batch_size, setup.cfg.device, progress=progress,
                                        local_classifier=local)
    finally:
        model.visual.load_state_dict(original)


def evaluate_state(setup: Setup, encoder_state: Dict[str, torch.Tensor], progress: bool = False,
                   indices: Optional[torch.Tensor] = None) -> dict:
    """Score an image-encoder state on the evaluation images of the setup (or the given subset of them)."""
    enc = encode_with_state(setup, encoder_state, indices, progress)
    return score(setup, enc["features"], enc["labels"], enc["domains"], enc.get("local_mcm"))


def headline(protocol: str, cells: dict) -> Dict[str, float]:
    """The numbers a protocol reports."""
    if protocol == "domain-shift":
        return {"train domains": cells["train domains"]["all"], "unseen domains": cells["unseen domains"]["all"]}
    if protocol == "base-to-new":
        return {k: cells["train domains"][k] for k in ("base", "new", "H")}
    if protocol == "in-the-wild":
        return {"unseen domains (all classes)": cells["unseen domains"]["all"]}
    out = {}
    for group in ("train domains", "unseen domains"):
        for c in ("base", "new", "H", "all"):
            out[f"{group} / {c}"] = cells[group][c]
    return out


def method_inputs(setup: Setup, method) -> Dict[str, torch.Tensor]:
    """The extra inputs a method names in `method.inputs`, built from the setup:

    - `context_features` (CAR-FT): the M x D context classifier of the experiment's templates over the
      training classes;
    - `unknown_text_features` (OGEN): text features of the held-out (new) classes, the names OGEN synthesises
      features for;
    - `class_feature_mean`, `class_feature_std` (OGEN): per training class, the mean and standard deviation of
      the zero-shot encoder's normalised features of the training images (evaluation transform), as the
      official code precomputes them.
    """
    d, out = setup.dataset, {}
    train_names = [d.classes[i] for i in setup.train_class_ids]
    if "context_features" in method.inputs:
        out["context_features"] = evaluation.context_classifier(setup.loaded.model, setup.loaded.tokenizer, train_names,
                                                                setup.templates, setup.cfg.device).cpu()
    if "unknown_text_features" in method.inputs:
        unknown = [i for i in range(len(d.classes)) if i not in setup.train_class_ids]
        if not unknown:
            raise ValueError(f"method {method.name!r} needs held-out class names, but protocol "
                             f"{setup.cfg.protocol!r} trains on every class; use base-to-new, in-the-wild or open-world")
        out["unknown_text_features"] = setup.text_features[unknown]
    if "class_feature_mean" in method.inputs or "class_feature_std" in method.inputs:
        enc = encode_with_state(setup, setup.zero_shot_state, indices=setup.train_idx)
        rows = [enc["features"][enc["labels"] == c] for c in setup.train_class_ids]
        empty = [d.classes[c] for c, r in zip(setup.train_class_ids, rows) if len(r) == 0]
        if empty:
            raise ValueError(f"training class(es) {empty} have no training images; class statistics need at least one")
        out["class_feature_mean"] = torch.stack([r.mean(0) for r in rows])
        out["class_feature_std"] = torch.stack([r.std(0, unbiased=False) for r in rows])
    return out


def run_method(setup: Setup, method_cfg: MethodConfig, train_cfg: TrainConfig, run_dir: Optional[Path] = None,
               resume: bool = False, progress: bool = True, on_step: Optional[Callable] = None,
               stop_after: Optional[int] = None, accelerator=None) -> dict:
    """Fine-tune a fresh copy of the zero-shot encoder with one method; evaluate its models; write the run."""
    start = time.perf_counter()
    encoder = copy.deepcopy(setup.loaded.model.visual)
    encoder.load_state_dict(setup.zero_shot_state)
    method = build_method(method_cfg)
    d = setup.dataset
    label_map = torch.full((len(d.classes),), -1, dtype=torch.long)
    label_map[torch.tensor(setup.train_class_ids)] = torch.arange(len(setup.train_class_ids))
    out: FineTuneOutput = fine_tune(
        encoder, TransformedSubset(d, setup.train_idx), setup.domain_pools,
        setup.text_features[setup.train_class_ids], setup.logit_scale, label_map, setup.loaded.train_transform(),
        method, train_cfg, run_dir=run_dir, resume=resume, stop_after=stop_after, progress=progress,
        on_step=on_step, accelerator=accelerator, method_inputs=method_inputs(setup, method))
    result = {"method": method_cfg.name, "primary": method.primary, "completed": out.completed,
              "method_config": asdict(method_cfg), "train_config": asdict(train_cfg), "history": out.history}
    if not out.completed:
        return result
    result["models"] = {name: evaluate_state(setup, state) for name, state in out.states.items()}
    result["headline"] = headline(setup.cfg.protocol, result["models"][method.primary])
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["states"] = out.states
    if run_dir is not None:
        write_run(setup, result, Path(run_dir))
    return result


def write_run(setup: Setup, result: dict, run_dir: Path) -> None:
    """results.json, history.json and the primary and last models as full CLIP safetensors (loadable with
    `load_clip(name, pretrained=path)`)."""
    full = setup.loaded.model.state_dict()
    for name in {result["primary"], "last"}:
        state = dict(full)
        state.update({f"visual.{k}": v for k, v in result["states"][name].items()})
        save_weights(run_dir / f"model_{name.replace('@', '_')}.safetensors", state,
                     metadata={"architecture": setup.cfg.model, "method": result["method"], "model": name})
    write_json(run_dir / "history.json", result["history"])
    public = {k: v for k, v in result.items() if k not in ("states", "history")}
    write_json(run_dir / "results.json", {"setup": setup.describe(), "experiment": asdict(setup.cfg), **public})


def zero_shot_cells(setup: Setup) -> dict:
    return evaluate_state(setup, setup.zero_shot_state)


def trajectory(setup: Setup, method_cfg: MethodConfig, train_cfg: TrainConfig, every: int = 10,
               eval_images: int = 800, progress: bool = False) -> dict:
    """Accuracy over training of the last-step model and of the running average (BMA/EMA), every `every`
    steps, on a fixed seeded subset of `eval_images` evaluation images. Step 0 is the zero-shot model."""
    gen = torch.Generator().manual_seed(train_cfg.seed)
    subset = setup.eval_idx[torch.randperm(len(setup.eval_idx), generator=gen)[:eval_images]].sort().values
    zero = evaluate_state(setup, setup.zero_shot_state, indices=subset)
    rows = [{"step": 0, "last": zero, "average": zero}]

    def on_step(row, encoder, method):
        if row["step"] % every and row["step"] != train_cfg.steps:
            return
        state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        entry = {"step": row["step"], "last": evaluate_state(setup, state, indices=subset)}
        if method.averager is not None:
            entry["average"] = evaluate_state(setup, with_average(state, method.averager.average), indices=subset)
        rows.append(entry)

    result = run_method(setup, method_cfg, train_cfg, progress=progress, on_step=on_step)
    return {"rows": rows, "result": result}
