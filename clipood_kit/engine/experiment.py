"""The experiment: its config, and `prepare`, which fixes everything a protocol decides before training
(data, splits, classes, the zero-shot model and its class text features).

Evaluation protocols of CLIPood (Sec. 4), one experiment object for all of them. Every protocol trains on
(source domains) x (training classes); `scoring` scores the same grid of cells on the held-out images:
(train domains: held-out images of the source domains | unseen domains: the target domains) x (base | new |
all | H). The protocol picks the training classes and the headline:

- `domain-shift` (DomainBed leave-domains-out): all classes are trained; headline: unseen domains x all.
- `base-to-new`: base classes trained, every domain a source; headline: base, new, H on held-out images.
- `in-the-wild`: base classes of the source domains trained; headline: unseen domains x all classes.
- `open-world` (the demo): base classes of the source domains; every cell is reported.
"""
from __future__ import annotations

import os
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from clipood_kit.evaluation import features as evaluation, ood
from clipood_kit.core.cache import FeatureCache
from clipood_kit.data import WORLD, DomainDataset, TransformedSubset, far_ood, open_dataset, splits, world
from clipood_kit.data.splits import Split
from clipood_kit.methods import Method, MethodConfig, MethodContext, compose, method_from_dict
from clipood_kit.models.adapted import AdaptedCLIP, PartModule, part_states, tokenize_prompts
from clipood_kit.models.loader import TINY_NAME, ZeroShot, load_clip
from clipood_kit.engine.encoding import encode
from clipood_kit.engine.training import TrainConfig
from clipood_kit.evaluation.zeroshot import default_templates

PROTOCOLS = ("domain-shift", "base-to-new", "in-the-wild", "open-world")
WORLD_SOURCES = ("photo", "sketch")


def _default_method() -> MethodConfig:
    return compose("clipood")


@dataclass
class ExperimentConfig:
    model: str = TINY_NAME
    pretrained: Optional[str] = "default"
    data: str = WORLD
    per_cell: int = 40                       # world only
    world_styles: Optional[List[str]] = None  # world only: the grid's styles (None: world.DEFAULT_STYLES); the
                                             # prompt-learning task adds "blueprint", the style pretraining saw rarely
    data_seed: int = 0                       # world only: seed of the images
    protocol: str = "open-world"
    source_domains: Optional[List[str]] = None   # default: world photo+sketch; folders: all but the last
    shots: Optional[int] = None              # k images per class and source domain (None: all)
    holdout_fraction: float = 0.2            # held-out share of every source domain (in-domain test)
    split_seed: int = 0
    templates: Optional[List[str]] = None
    method: MethodConfig = field(default_factory=_default_method)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int = 256
    eval_precision: Optional[str] = None     # autocast of evaluation: None = the training precision; "no", "bf16", "fp16"
    device: str = "auto"                     # "auto": the accelerator when present, else the CPU
    cache_dir: Optional[str] = None          # feature cache (None: ~/.cache/clipood-kit/features; "off": none)
    fpr_rule: str = ood.DEFAULT_FPR_RULE     # FPR95 threshold rule: "at-least" (ours) or "nearest" (official MCM)
    ood_params: Dict[str, float] = field(default_factory=dict)   # OOD score parameters, 'SCORE.PARAM': value
                                             # (`ood.SCORES`; e.g. GL-MCM.lambda 0.5, the official ImageNet script's)
    far_ood_sets: Optional[List[str]] = None     # world only: its rendered far-OOD sets (`far_ood.WORLD_SETS`);
                                             # None: all of them, []: none
    ood_data: List[str] = field(default_factory=list)   # OOD image folders, '[near:|far:][NAME=]FOLDER' (--ood-data)
    eval_data: List[str] = field(default_factory=list)  # ImageNet variants scored as unseen domains (--eval-data)

    def __post_init__(self):
        if isinstance(self.method, str):
            self.method = compose(self.method)
        elif isinstance(self.method, dict):
            self.method = method_from_dict(self.method)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        ood.check_fpr_rule(self.fpr_rule)
        if self.eval_precision not in (None, "no", "bf16", "fp16"):
            raise ValueError(f"eval_precision must be none (the training precision), 'no', 'bf16' or 'fp16', got "
                             f"{self.eval_precision!r}")
        self.ood_params = dict(self.ood_params)
        ood.score_params(self.ood_params)
        if self.world_styles is not None:
            self.world_styles = list(self.world_styles)
            if self.data != WORLD:
                raise ValueError("world_styles are the embedded world's; a folder dataset's domains are its folders")
            unknown = [s for s in self.world_styles if s not in world.STYLES]
            if unknown or not self.world_styles or len(set(self.world_styles)) < len(self.world_styles):
                raise ValueError(f"world_styles must be distinct styles of the world ({list(world.STYLES)}), got "
                                 f"{self.world_styles}")
        if self.far_ood_sets is not None:
            self.far_ood_sets = list(self.far_ood_sets)
            unknown = [s for s in self.far_ood_sets if s not in far_ood.WORLD_SETS]
            if unknown:
                raise ValueError(f"unknown world far-OOD set(s) {unknown}; the world has {list(far_ood.WORLD_SETS)}")
            if self.far_ood_sets and self.data != WORLD:
                raise ValueError("far_ood_sets are the embedded world's; a folder dataset scores its OOD sets from "
                                 "--ood-data FOLDER")
        self.ood_data = list(self.ood_data)
        self.eval_data = list(self.eval_data)
        for spec in self.ood_data:
            far_ood.parse_ood_data(spec)

    @property
    def world_ood_sets(self) -> List[str]:
        """The world's far-OOD sets this experiment renders (none for a folder dataset)."""
        if self.data != WORLD:
            return []
        return list(far_ood.WORLD_SETS) if self.far_ood_sets is None else list(self.far_ood_sets)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["method"] = self.method.to_dict()
        out["train"] = dataclasses.asdict(self.train)
        return out


def inputs_identity(cfg: ExperimentConfig, loaded=None, dataset=None) -> dict:
    """What the experiment's inputs are, beyond its config: the weights (a weights file's digest, or the tag) and,
    for a folder dataset, a digest of its image files with sizes and modification times. Cache keys use it.
    A model and dataset already built (`prepare`) are read, so the weights file is not hashed twice (`load_clip`
    made `model_id` from its digest) and the folder is not listed twice."""
    import hashlib
    from pathlib import Path
    from clipood_kit.models.loader import file_digest, tiny_weights_path
    if loaded is not None:
        model = loaded.model_id
    else:
        weights = cfg.pretrained
        if weights == "default" and cfg.model == TINY_NAME:
            weights = str(tiny_weights_path())
        model = f"file:{file_digest(weights)}" if weights and Path(weights).is_file() else str(weights)
    data = cfg.data
    if cfg.data != WORLD:
        dataset = dataset if dataset is not None else experiment_data(cfg)
        h = hashlib.sha256()
        for f, label, domain in zip(dataset.paths, dataset.labels.tolist(), dataset.domain_ids.tolist()):
            st = f.stat()      # every file's place, size, time, label and domain: a changed split file changes it
            h.update(f"{os.path.relpath(f, dataset.root)}|{st.st_size}|{st.st_mtime_ns}|{label}|{domain}\n".encode())
        data = f"folder:{h.hexdigest()[:16]}"
    return {"model": model, "data": data}


@dataclass
class Setup:
    """Everything a protocol fixes before training, in typed pieces: the spec, the dataset, its `Split` (data.splits)
    and the `ZeroShot` model (models.loader); the identity of the inputs, the feature cache and the OOD sets. A
    function that needs one piece takes that piece."""

    cfg: ExperimentConfig
    dataset: DomainDataset
    split: Split                             # which images train and which are held out; domains and classes
    zero_shot: ZeroShot                      # CLIP, its classifier of every class, the templates, its image state
    inputs: dict = field(default_factory=dict)   # inputs_identity(cfg): the weights and data behind the config
    cache: Optional[FeatureCache] = field(default=None, repr=False)
    ood_sets: Dict[str, far_ood.OODSet] = field(default_factory=dict)   # OOD sets beside the dataset, by name
                                             # (`data.far_ood`: the world's far ones, --ood-data folders)
    _scratch: Dict[tuple, AdaptedCLIP] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        """Where the model and evaluation live (the experiment's device, 'auto' resolved)."""
        return self.zero_shot.device

    @property
    def eval_precision(self) -> str:
        """The autocast of evaluation: the spec's `eval_precision`, else the training precision."""
        return self.cfg.eval_precision or self.cfg.train.precision

    def for_method(self, method: Optional[MethodConfig] = None, train: Optional[TrainConfig] = None) -> "Setup":
        """This setup with another method or training config in its spec (the data, splits and model are shared,
        not copied): a bench trains several methods on one prepared experiment, and each run records its own."""
        cfg = dataclasses.replace(self.cfg, method=method or self.cfg.method, train=train or self.cfg.train)
        return dataclasses.replace(self, cfg=cfg)

    def method_context(self, method: Optional[Method] = None) -> MethodContext:
        """What a method may read before training (`methods.base.MethodContext`). The training images' zero-shot
        features are encoded only when `method` has a part that reads them; without `method` the context is
        cheap (a bench checks every method on it before any trains)."""
        features = None
        if method is not None and method.reads_training_features:
            features = encode(self, self.zero_shot.state, indices=self.split.train_idx)
        zero, data = self.zero_shot, self.dataset
        held_out = self.split.held_out(data.labels, data.domain_ids)
        return MethodContext(class_names=list(data.classes), train_class_ids=list(self.split.train_class_ids),
                             text_features=zero.text_features, templates=list(zero.templates),
                             protocol=self.cfg.protocol, clip=zero.loaded, seed=self.cfg.train.seed,
                             held_out=TransformedSubset(data, held_out, zero.loaded.preprocess),
                             training_features=features)

    def model(self, towers=("image",), parts: Optional[Dict[str, PartModule]] = None) -> AdaptedCLIP:
        """A fresh model at the zero-shot weights (`models.adapted.AdaptedCLIP`) on the setup's device; the text
        tower, when it trains, holds the experiment's prompts of every class."""
        tokens = None
        if "text" in towers:
            tokens = tokenize_prompts(self.zero_shot.loaded.tokenizer, self.dataset.classes,
                                      self.zero_shot.templates).to(self.device)
        return AdaptedCLIP.build(self.zero_shot.loaded.model, self.zero_shot.text_features, towers, tokens, parts)

    def prepare_method(self, method: Method) -> AdaptedCLIP:
        """`method` checked and prepared on this experiment's context, and the model it trains: the towers its
        parts train and its parts' modules, at the zero-shot weights."""
        context = self.method_context(method)
        method.prepare(context)
        return self.model(method.trains, method.model_modules(context))

    def scratch_for(self, state: Dict[str, torch.Tensor]) -> AdaptedCLIP:
        """A private model holding `state` (the shared CLIP is never touched): its structure follows the state's
        keys (a text tower, the parts' modules, rebuilt by each part's `PartModule.from_state`), entries the
        state lacks are zero-shot. One scratch model per structure is kept and reloaded for each state."""
        from clipood_kit.methods import part_configs
        has_text, kinds = AdaptedCLIP.structure_of(state)
        key = (has_text, kinds, tuple(v.shape for k, v in sorted(state.items()) if k.startswith("parts.")))
        if key not in self._scratch:
            known = part_configs()
            modules = {}
            for kind, sub in part_states(state).items():
                cls = known[kind].module if kind in known else None
                if cls is None:
                    raise ValueError(f"the state holds entries of part {kind!r}, which has no model module; "
                                     f"known parts with modules: {[k for k, c in known.items() if c.module]}")
                modules[kind] = cls.from_state(sub)
            self._scratch[key] = self.model(("image", "text") if has_text else ("image",), modules).eval()
        model = self._scratch[key]
        model.load_trained_state({**self.zero_shot.state, **state})
        return model

    def describe(self) -> dict:
        d, split = self.dataset, self.split
        return {
            "dataset": d.describe(), "protocol": self.cfg.protocol,
            "source_domains": [d.domains[i] for i in split.source_ids],
            "target_domains": [d.domains[i] for i in split.target_ids],
            "base_classes": [d.classes[i] for i in split.base_ids],
            "new_classes": [d.classes[i] for i in split.new_ids],
            "train_images": len(split.train_idx), "eval_images": len(split.eval_idx),
            "templates": self.zero_shot.templates,
            "model_id": self.zero_shot.loaded.model_id, "logit_scale": self.zero_shot.logit_scale,
            "ood_sets": {name: s.describe() for name, s in self.ood_sets.items()},
        }


def experiment_data(cfg: ExperimentConfig) -> DomainDataset:
    """The experiment's dataset: `--data`, with ImageNet's variants (`--eval-data`) as evaluation-only domains
    (`data.coop_layout.WithVariants`)."""
    dataset = open_dataset(cfg.data, cfg.per_cell, cfg.data_seed, cfg.world_styles)
    if not cfg.eval_data:
        return dataset
    from clipood_kit.data.coop_layout import CoOpDataset, WithVariants
    variants = [open_dataset(v) for v in cfg.eval_data]
    if not isinstance(dataset, CoOpDataset) or not all(isinstance(v, CoOpDataset) for v in variants):
        raise ValueError("--eval-data adds ImageNet's variants (imagenetv2, imagenet-sketch, imagenet-a, imagenet-r) "
                         "to a run on --data imagenet:ROOT")
    return WithVariants(dataset, variants)


def prepare(cfg: ExperimentConfig) -> Setup:
    """The data, splits and the zero-shot model of a spec. Everything about the data is checked first (domains,
    splits, every image the run will read, decoded), then the weights are loaded, so a bad input stops the run
    before any slow work."""
    dataset = experiment_data(cfg)
    eval_only = [dataset.domains[d] for d in getattr(dataset, "eval_only", [])]
    names = dataset.domains
    if cfg.source_domains is None:
        trainable = [n for n in names if n not in eval_only]
        sources = list(WORLD_SOURCES) if cfg.data == WORLD else (trainable if eval_only else names[:-1])
    else:
        sources = list(cfg.source_domains)
    unknown = [s for s in sources if s not in names]
    if unknown:
        raise ValueError(f"source domain(s) {unknown} not in the dataset; its domains are {names}")
    if cfg.protocol == "base-to-new":
        if cfg.source_domains is not None and sorted(cfg.source_domains) != sorted(names):
            raise ValueError(f"--protocol base-to-new trains on every domain of the dataset ({names}), so a source "
                             f"list {list(cfg.source_domains)} would be ignored: leave --source and --target out, or use "
                             f"--protocol open-world to train on some domains and test the others")
        sources = [n for n in names if n not in eval_only]
    if not sources:
        hint = (" (a folder with one domain trains under --protocol base-to-new: base classes train, new classes "
                "test)" if len(names) == 1 else "")
        raise ValueError(f"no source domain to train on; the dataset's domains are {names}{hint}")
    source_ids = [names.index(s) for s in sources]
    target_ids = [i for i in range(len(names)) if i not in source_ids]
    if cfg.protocol != "base-to-new" and not target_ids:
        raise ValueError(f"protocol {cfg.protocol} needs at least one unseen domain; the sources are all of {names} "
                         f"(hold one out with --target, or use --protocol base-to-new, which tests on new classes)")

    if cfg.protocol == "domain-shift":
        base_ids, new_ids = list(range(len(dataset.classes))), []
    else:
        base_ids, new_ids = dataset.base_new_split()
    if target_ids:
        in_source, targets = splits.domain_split(dataset.domain_ids, target_ids)
    else:
        in_source, targets = torch.arange(len(dataset)), torch.empty(0, dtype=torch.long)
    official = dataset.official_split(source_ids, target_ids, cfg.protocol, cfg.shots, cfg.split_seed)
    if official is None:                # the kit's hold-out of every source domain
        kept, held = splits.holdout_split(dataset.domain_ids, cfg.holdout_fraction, cfg.split_seed, indices=in_source)
        eval_idx, drawn = torch.cat([held, targets]).sort().values, False
    else:                               # the dataset's own lists (CoOp's, DomainBed's): data/*_layout.py
        kept, eval_idx, drawn = official
    train_idx = splits.select_classes(dataset.labels, base_ids, kept)
    if cfg.shots is not None and not drawn:
        train_idx = torch.cat([splits.k_shot(dataset.labels, cfg.shots, cfg.split_seed,
                                             train_idx[dataset.domain_ids[train_idx] == d]) for d in source_ids]).sort().values
    dataset.verify(torch.cat([train_idx, eval_idx]).tolist())    # every image the run will read, before any work
    in_dist = (torch.isin(dataset.domain_ids[eval_idx], torch.tensor(source_ids))
               & torch.isin(dataset.labels[eval_idx], torch.tensor(base_ids)))
    ood_sets = far_ood.open_ood_sets(cfg.world_ood_sets, cfg.ood_data, n=max(1, int(in_dist.sum())),
                                     seed=cfg.data_seed, styles=sources, id_data=dataset,
                                     world_config=getattr(dataset, "config", None))
    for s in ood_sets.values():
        s.verify()
    loaded = load_clip(cfg.model, cfg.pretrained, device=cfg.device)
    train_domains = dataset.domain_ids[train_idx]
    pools = [(train_domains == d).nonzero().squeeze(1) for d in source_ids]
    # the dataset's own template travels with it (CoOp's CUSTOM_TEMPLATES, CLIPood's DomainBed prompt)
    templates = cfg.templates or ([dataset.template] if getattr(dataset, "template", None)
                                  else default_templates(cfg.model, cfg.data))
    cache = FeatureCache(cfg.cache_dir)
    inputs = inputs_identity(cfg, loaded, dataset)
    text = cache.get("text", {"model": inputs["model"], "classes": dataset.classes, "templates": templates},
                     lambda: {"text": evaluation.text_classifier(loaded.model, loaded.tokenizer, dataset.classes,
                                                                 templates).cpu()})["text"]
    zero_shot = {f"visual.{k}": v.detach().clone() for k, v in loaded.model.visual.state_dict().items()}
    split = Split(train_idx=train_idx, eval_idx=eval_idx, domain_pools=pools, source_ids=source_ids,
                  target_ids=target_ids, base_ids=base_ids, new_ids=new_ids, train_class_ids=base_ids)
    return Setup(cfg=cfg, dataset=dataset, split=split, zero_shot=ZeroShot(loaded, text, templates, zero_shot),
                 inputs=inputs, cache=cache, ood_sets=ood_sets)


__all__ = ["ExperimentConfig", "Setup", "Split", "ZeroShot", "prepare", "PROTOCOLS"]
