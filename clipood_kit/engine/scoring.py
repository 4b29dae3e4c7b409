"""Scoring a weight state of the image encoder on an experiment's held-out images: accuracy of every cell,
OOD detection, and the protocol's headline.

Results are keyed by data, never by display strings:

    {"accuracy":  {domain group: {class group: %}},     domain group: "train" (held-out images of the source
                                                         domains) | "unseen" (the target domains)
     "by_domain": {domain name: {class group: %}},       class group: "base" | "new" | "all" | "H"
     "ood":       {shift: {score: {metric: %}}},        shift: "semantic" | "covariate" | "both" (the
                                                         dataset's) | an OOD set's name (`Setup.ood_sets`)
     "ood_shifts": {shift: kind}}                        kind: "near" | "far" | "covariate" (SHIFT_KINDS)

Base images are classified among the base names, new images among the new names, all images among all names;
H is the harmonic mean of base and new. `label(...)` makes the display strings.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from clipood_kit.evaluation import features as evaluation, ood
from clipood_kit.data import TransformedSubset, far_ood
from clipood_kit.engine.encoding import encode, encode_ood_set, state_cosines
from clipood_kit.engine.experiment import Setup

DOMAIN_GROUPS = {"train": "train domains", "unseen": "unseen domains"}
CLASS_GROUPS = ("base", "new", "all", "H")
OOD_SHIFTS = {"semantic": ("source", "new"), "covariate": ("target", "base"), "both": ("target", "new")}
# near-OOD: new classes, each with a sibling among the base classes; covariate: the base classes in unseen styles
# (a shift of style, not of content); far-OOD: the OOD sets beside the dataset (their own `kind`, `data.far_ood`)
SHIFT_KINDS = {"semantic": "near", "covariate": "covariate", "both": "near"}
KIND_ORDER = ("near", "far", "covariate")           # how tables list the kinds


def shift_kinds(setup: Setup) -> Dict[str, str]:
    """Every OOD shift of the setup with its kind: the dataset's (SHIFT_KINDS), then its OOD sets'."""
    return {**SHIFT_KINDS, **{name: s.kind for name, s in setup.ood_sets.items()}}

# the protocols' headline cells, (domain group, class group)
HEADLINES = {
    "domain-shift": (("train", "all"), ("unseen", "all")),
    "base-to-new": (("train", "base"), ("train", "new"), ("train", "H")),
    "in-the-wild": (("unseen", "all"),),
    "open-world": tuple((g, c) for g in ("train", "unseen") for c in CLASS_GROUPS),
}


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def label(*path: str) -> str:
    """Display string of a result path: ('unseen', 'new') -> 'unseen domains / new',
    ('ood', 'semantic', 'MCM', 'AUROC') -> 'OOD AUROC (MCM, near: semantic)' (the kind where the name tells it:
    the dataset's shifts and the world's far-OOD sets; a folder set is shown by its name)."""
    if path and path[0] == "ood":
        _, shift, score, metric = path
        kind = {**SHIFT_KINDS, **{s: "far" for s in far_ood.WORLD_SETS}}.get(shift)
        return f"OOD {metric} ({score}, {f'{kind}: ' if kind else ''}{shift})"
    group, cls = path[-2], path[-1]
    return f"{DOMAIN_GROUPS.get(group, group)} / {cls}"


def lookup(scores: dict, path: Tuple[str, ...]) -> float:
    """The value at a path of `score`'s result: ('unseen', 'new') is an accuracy, ('ood', shift, score, metric)
    an OOD number."""
    node, keys = (scores["ood"], path[1:]) if path[0] == "ood" else (scores["accuracy"], path)
    for key in keys:
        node = node[key]
    return node


def _cells(setup: Setup, cosines: torch.Tensor, labels: torch.Tensor, in_group: torch.Tensor) -> Dict[str, float]:
    classes = {"base": setup.split.base_ids, "new": setup.split.new_ids, "all": list(range(len(setup.dataset.classes)))}
    cells = {}
    for cname, cls_ids in classes.items():
        if not cls_ids:
            continue
        m = in_group & torch.isin(labels, torch.tensor(cls_ids))
        if m.any():
            ids = torch.tensor(cls_ids)
            pred = ids[cosines[m][:, ids].argmax(1)]        # only the group's classes compete
            cells[cname] = 100.0 * (pred == labels[m]).float().mean().item()
    if "base" in cells and "new" in cells:
        cells["H"] = harmonic_mean(cells["base"], cells["new"])
    return cells


def held_classes_only(dataset, cosines: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """The class scores for accuracy: for a domain that holds only some classes (`dataset.domain_classes`,
    ImageNet-A and -R: 200), the others are set to -inf, so its images are classified among its own classes."""
    allowed = getattr(dataset, "domain_classes", None)
    if not allowed:
        return cosines
    out = cosines.clone()
    for d, ids in allowed.items():
        rows = (domains == d).nonzero().flatten()
        if len(rows) and len(ids) < cosines.shape[1]:
            others = torch.ones(cosines.shape[1], dtype=torch.bool)
            others[torch.as_tensor(ids, dtype=torch.long)] = False
            out[rows[:, None], others.nonzero().flatten()[None, :]] = float("-inf")
    return out


def score(setup: Setup, cosines: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
          local_mcm: Optional[torch.Tensor] = None,
          ood_sets_scored: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> dict:
    """Every cell (module docstring) from the class scores of the images, N x C in cosine units (every class;
    `encoding.state_cosines`); `local_mcm` (ViT towers) adds GL-MCM; `ood_sets_scored` ({set name: {'cosines',
    optional 'local_mcm'}}) adds the OOD sets beside the dataset. FPR95's threshold rule and the scores'
    parameters come from the experiment."""
    groups = {"train": setup.split.source_ids, "unseen": setup.split.target_ids}
    out = {"accuracy": {}, "by_domain": {}}
    held = held_classes_only(setup.dataset, cosines, domains)
    for gname, dom_ids in groups.items():
        if dom_ids:
            out["accuracy"][gname] = _cells(setup, held, labels, torch.isin(domains, torch.tensor(dom_ids)))
    for i, name in enumerate(setup.dataset.domains):
        out["by_domain"][name] = _cells(setup, held, labels, domains == i)
    detection = ood_detection(setup, cosines, labels, domains, local_mcm, ood_sets_scored)
    if detection:
        kinds = shift_kinds(setup)
        out["ood"] = detection
        out["ood_shifts"] = {shift: kinds[shift] for shift in detection}
    return out


def ood_sets(setup: Setup, labels: torch.Tensor, domains: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Masks of the OOD-detection image sets that have images: 'ID' (the training distribution: held-out images
    of the source domains, base classes) and each shift of OOD_SHIFTS (semantic = new classes in the source
    domains, covariate = base classes in unseen domains, both = new classes in unseen domains)."""
    out = {}
    for name, (where, classes) in {"ID": ("source", "base"), **OOD_SHIFTS}.items():
        dom_ids = setup.split.source_ids if where == "source" else setup.split.target_ids
        cls_ids = setup.split.base_ids if classes == "base" else setup.split.new_ids
        if dom_ids and cls_ids:
            m = torch.isin(domains, torch.tensor(dom_ids)) & torch.isin(labels, torch.tensor(cls_ids))
            if m.any():
                out[name] = m
    return out


def ood_detection(setup: Setup, cosines: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                  local_mcm: Optional[torch.Tensor] = None,
                  ood_sets_scored: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> dict:
    """OOD detection of every shift against the training distribution (the sets of `ood_sets`, then the OOD sets
    of `ood_sets_scored`), from the class scores of the base classes: {shift: {score: {metric: %}}}."""
    sets = ood_sets(setup, labels, domains)
    in_dist = sets.pop("ID", None)
    if in_dist is None:
        return {}
    cos = cosines[:, setup.split.base_ids]
    out = {}
    for shift, m in sets.items():
        local = (None, None) if local_mcm is None else (local_mcm[in_dist], local_mcm[m])
        out[shift] = ood.evaluate(cos[in_dist], cos[m], setup.zero_shot.logit_scale, *local, fpr_rule=setup.cfg.fpr_rule,
                                  params=setup.cfg.ood_params)
    for name, scored in (ood_sets_scored or {}).items():
        local = (None, None) if local_mcm is None else (local_mcm[in_dist], scored["local_mcm"])
        out[name] = ood.evaluate(cos[in_dist], scored["cosines"][:, setup.split.base_ids], setup.zero_shot.logit_scale, *local,
                                 fpr_rule=setup.cfg.fpr_rule, params=setup.cfg.ood_params)
    return out


def _scored_ood_sets(setup: Setup, state: Dict[str, torch.Tensor], progress: bool = False) -> Dict[str, dict]:
    """{set name: {'cosines', 'local_mcm' where the tower gives it}} of the setup's OOD sets under a state."""
    out = {}
    for name in setup.ood_sets:
        enc = encode_ood_set(setup, state, name, progress)
        out[name] = {"cosines": state_cosines(setup, state, enc["features"]),
                     **({"local_mcm": enc["local_mcm"]} if "local_mcm" in enc else {})}
    return out


def ood_score_sets(setup: Setup, state: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per-image OOD scores under an encoder state: {'ID', a shift of OOD_SHIFTS or an OOD set's name: {score:
    values}}, the same sets and scores as `ood_detection` (the OOD notebook's histograms and ROC curves)."""
    enc = encode(setup, state)

    def scores_of(cosines, local):
        return ood.all_scores(cosines[:, setup.split.base_ids], setup.zero_shot.logit_scale, local, setup.cfg.ood_params)
    scores = scores_of(state_cosines(setup, state, enc["features"]), enc.get("local_mcm"))
    out = {name: {score: values[m] for score, values in scores.items()}
           for name, m in ood_sets(setup, enc["labels"], enc["domains"]).items()}
    for name, scored in _scored_ood_sets(setup, state).items():
        out[name] = scores_of(scored["cosines"], scored.get("local_mcm"))
    return out


def evaluate_state(setup: Setup, state: Dict[str, torch.Tensor], progress: bool = False,
                   indices: Optional[torch.Tensor] = None) -> dict:
    """Score a model state on the evaluation images of the setup (or the given subset of them), and on its OOD
    sets."""
    enc = encode(setup, state, indices, progress)
    return score(setup, state_cosines(setup, state, enc["features"]), enc["labels"], enc["domains"],
                 enc.get("local_mcm"), _scored_ood_sets(setup, state, progress))


def zero_shot_scores(setup: Setup) -> dict:
    return evaluate_state(setup, setup.zero_shot.state)


def headline(protocol: str, scores: dict) -> Dict[str, Dict[str, float]]:
    """The cells a protocol reports, {domain group: {class group: %}}."""
    out: Dict[str, Dict[str, float]] = {}
    for group, cls in HEADLINES[protocol]:
        out.setdefault(group, {})[cls] = scores["accuracy"][group][cls]
    return out


def flat_labels(nested: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """{domain group: {class group: v}} -> {'unseen domains / new': v} (display only)."""
    return {label(g, c): v for g, cells in nested.items() for c, v in cells.items()}



class StateScorer:
    """Scores many weight states on one fixed image set, fast (the notebooks' sliders, sweeps): the images (and
    the setup's OOD sets) are transformed once and kept as tensors, so a state costs one forward pass in
    inference mode plus the cell and OOD arithmetic of `score`. Tiny CLIP, default evaluation set: see
    benchmarks/state_scorer.py."""

    def __init__(self, setup: Setup, indices: Optional[torch.Tensor] = None, batch_size: int = 512):
        self.setup, self.batch_size = setup, batch_size
        idx = setup.split.eval_idx if indices is None else indices
        self.indices = idx
        self.images = self._transformed(setup.dataset, idx)
        self.labels = setup.dataset.labels[idx]
        self.domains = setup.dataset.domain_ids[idx]
        self.ood_images = {name: self._transformed(s, torch.arange(len(s))) for name, s in setup.ood_sets.items()}

    def _transformed(self, dataset, idx: torch.Tensor) -> torch.Tensor:
        subset = TransformedSubset(dataset, idx, self.setup.zero_shot.loaded.preprocess)
        return torch.stack([subset[i][0] for i in range(len(subset))])

    def features(self, state: Dict[str, torch.Tensor], images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised image features of `images` (default: the scorer's evaluation images) under `state`."""
        model = self.setup.scratch_for(state).eval()
        dtype, device = next(model.visual.parameters()).dtype, self.setup.device
        images = self.images if images is None else images
        with torch.inference_mode(), evaluation.autocast(device, self.setup.eval_precision):
            out = [torch.nn.functional.normalize(model.image_features(batch.to(device, dtype)).float(), dim=-1).cpu()
                   for batch in images.split(self.batch_size)]
        return torch.cat(out)

    def __call__(self, state: Dict[str, torch.Tensor]) -> dict:
        if evaluation.has_local_features(self.setup.zero_shot.loaded.model.visual):      # GL-MCM needs the patch tokens
            return evaluate_state(self.setup, state, indices=self.indices)
        sets = {name: {"cosines": state_cosines(self.setup, state, self.features(state, images))}
                for name, images in self.ood_images.items()}
        return score(self.setup, state_cosines(self.setup, state, self.features(state)), self.labels, self.domains,
                     ood_sets_scored=sets)
