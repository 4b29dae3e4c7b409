"""Out-of-distribution detection scores on CLIP cosines, and their metrics.

Scores (higher = more in-distribution), from s_i = cos(f, t_i), the raw cosines to the ID class text features
(MCM: Ming et al., NeurIPS 2022; docs/methods.md):

- MCM        max_i softmax(s / T)_i, T = 1
- MSP        the same at T = 1 / tau (the classifier's own confidence)
- max-logit  max_i s_i
- energy     T * logsumexp(s / T)
- entropy    -H(softmax(s / T))
- GL-MCM     MCM + lambda * max_{p, i} softmax(s^local_p / T)_i over the patches p of a ViT tower (Miyai et al.,
             2023; lambda 1 by default, a parameter), only where the image tower gives local features (`evaluation.has_local_features`);
             the tiny CLIP's ModifiedResNet has no patch tokens, so its tables have no GL-MCM row.

The scores live in one registry, `SCORES` (like the FPR rules): each entry names its function, its parameters
with their defaults and whether it needs local features. An experiment overrides a parameter with
`--set ood.SCORE.PARAM=VALUE` (`ExperimentConfig.ood_params`, e.g. `ood.GL-MCM.lambda=0.5`, the official
ImageNet script's); a new score is one function and one registry entry.

Metrics, with ID as the positive class: FPR at 95 % TPR, AUROC, AUPR (average precision). FPR95 has two
threshold rules (`FPR_RULES`): "at-least" (ours, the default: the highest threshold that keeps at least 95 % of
ID samples, scikit-learn's ROC convention) and "nearest" (the MCM and GL-MCM code's Hendrycks
`fpr_and_fdr_at_recall`, deeplearning-wisc/MCM utils/detection_util.py lines 66-104: the threshold whose TPR
is nearest 95 %, ties to the lower threshold). Tables name the rule they use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch


def mcm(cosines: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(cosines / temperature, dim=1).max(1).values


def msp(cosines: torch.Tensor, logit_scale: float) -> torch.Tensor:
    return mcm(cosines, 1.0 / logit_scale)


def max_logit(cosines: torch.Tensor) -> torch.Tensor:
    return cosines.max(1).values


def energy(cosines: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return temperature * torch.logsumexp(cosines / temperature, dim=1)


def neg_entropy(cosines: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    log_p = torch.log_softmax(cosines / temperature, dim=1)
    return (log_p.exp() * log_p).sum(1)


def gl_mcm(cosines: torch.Tensor, local_part: torch.Tensor, lam: float = 1.0,
           temperature: float = 1.0) -> torch.Tensor:
    """GL-MCM = MCM of the global cosines (N x C) + lam * the local part (N, from `local_mcm`)."""
    return mcm(cosines, temperature) + lam * local_part


def local_mcm(local_cosines: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """max over patches and classes of softmax(s_local / T), N x P x C -> N."""
    return torch.softmax(local_cosines / temperature, dim=-1).amax(dim=(1, 2))


@dataclass(frozen=True)
class Score:
    """An OOD score: `compute(cosines, logit_scale, local, **params)` -> N scores (higher = more ID)."""

    compute: Callable[..., torch.Tensor]
    params: Mapping[str, float] = field(default_factory=dict)
    needs_local: bool = False
    summary: str = ""


SCORES: Dict[str, Score] = {
    "MCM": Score(lambda c, scale, local, temperature: mcm(c, temperature), {"temperature": 1.0},
                 summary="max softmax of the cosines at temperature T (MCM)"),
    "MSP": Score(lambda c, scale, local: msp(c, scale), summary="max softmax at the classifier's logit scale"),
    "max-logit": Score(lambda c, scale, local: max_logit(c), summary="largest cosine"),
    "energy": Score(lambda c, scale, local, temperature: energy(c, temperature), {"temperature": 1.0},
                    summary="T logsumexp(s / T)"),
    "entropy": Score(lambda c, scale, local, temperature: neg_entropy(c, temperature), {"temperature": 1.0},
                     summary="negative entropy of softmax(s / T)"),
    "GL-MCM": Score(lambda c, scale, local, **p: gl_mcm(c, local, p["lambda"], p["temperature"]),
                    {"lambda": 1.0, "temperature": 1.0}, needs_local=True,
                    summary="MCM + lambda x the patches' local MCM (ViT towers)"),
}


def score_params(overrides: Optional[Mapping[str, float]] = None) -> Dict[str, Dict[str, float]]:
    """Every score's parameters: the registry's defaults with `{'SCORE.PARAM': value}` overrides, validated."""
    out = {name: dict(s.params) for name, s in SCORES.items()}
    for key, value in (overrides or {}).items():
        name, _, param = key.partition(".")
        if name not in SCORES or param not in SCORES[name].params:
            known = [f"{n}.{q}" for n, s in SCORES.items() for q in s.params]
            raise ValueError(f"unknown OOD score parameter {key!r}; the scores' parameters are {known}")
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"OOD score parameter {key} must be finite and >= 0, got {value!r}")
        if param == "temperature" and value == 0:
            raise ValueError(f"OOD score parameter {key} must be > 0 (it divides the cosines)")
        out[name][param] = float(value)
    return out


def all_scores(cosines: torch.Tensor, logit_scale: float, local: torch.Tensor = None,
               params: Optional[Mapping[str, float]] = None) -> Dict[str, torch.Tensor]:
    """Every registered score for a batch of cosines (N x C), with `params` overrides ('GL-MCM.lambda'); the
    scores that need local features only when `local` holds the images' local MCM part (N, from `local_mcm` or
    `evaluation.encode_images(local_classifier=...)`)."""
    values = score_params(params)
    return {name: s.compute(cosines, logit_scale, local, **values[name]) for name, s in SCORES.items()
            if local is not None or not s.needs_local}


def _check(id_scores: torch.Tensor, ood_scores: torch.Tensor):
    if id_scores.numel() == 0 or ood_scores.numel() == 0:
        raise ValueError("OOD metrics need at least one in-distribution and one OOD score")
    if not (torch.isfinite(id_scores).all() and torch.isfinite(ood_scores).all()):
        raise ValueError("OOD scores contain NaN or inf (a diverged model or a broken feature); metrics on them "
                         "would look valid and be meaningless")
    return id_scores.double().flatten(), ood_scores.double().flatten()


def fpr_at_tpr(id_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """Fraction of OOD samples scored >= the highest threshold that keeps at least `tpr` of ID samples."""
    id_s, ood_s = _check(id_scores, ood_scores)
    ordered = id_s.sort(descending=True).values
    threshold = ordered[math.ceil(tpr * len(ordered)) - 1]
    return (ood_s >= threshold).double().mean().item()


def fpr_at_tpr_nearest(id_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """FPR at the distinct-score threshold whose TPR is nearest `tpr`, among the thresholds from the highest down
    to the first that accepts every ID sample; on a tie the lower threshold (the official code's
    argmin over the reversed list)."""
    id_s, ood_s = _check(id_scores, ood_scores)
    tp, accepted = _threshold_counts(id_s, ood_s)
    last = int((tp == len(id_s)).nonzero()[0])
    tp, fp = tp[:last + 1], (accepted - tp)[:last + 1]
    distance = (tp / len(id_s) - tpr).abs()
    pick = last - int(distance.flip(0).argmin())
    return (fp[pick] / len(ood_s)).item()


def auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """P(score of an ID sample > score of an OOD sample), ties counted as 1/2 (Mann-Whitney U, average ranks)."""
    id_s, ood_s = _check(id_scores, ood_scores)
    ordered = torch.cat([id_s, ood_s]).sort().values
    below = torch.searchsorted(ordered, id_s, right=False)
    upto = torch.searchsorted(ordered, id_s, right=True)
    ranks = (below + 1 + upto).double() / 2          # average 1-based rank of each ID score among all
    n_id, n_ood = len(id_s), len(ood_s)
    return ((ranks.sum() - n_id * (n_id + 1) / 2) / (n_id * n_ood)).item()


def _threshold_counts(id_s: torch.Tensor, ood_s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """At each distinct score, highest first, as the threshold: (ID samples accepted, all samples accepted)."""
    values = torch.cat([id_s, ood_s])
    positive = torch.cat([torch.ones_like(id_s), torch.zeros_like(ood_s)])
    order = values.argsort(descending=True)
    _, counts = torch.unique_consecutive(values[order], return_counts=True)
    ends = counts.cumsum(0) - 1                       # last index of each group of equal scores
    return positive[order].cumsum(0)[ends], (ends + 1).double()


def aupr(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Average precision with ID positive: sum over distinct thresholds of (recall step) x precision."""
    id_s, ood_s = _check(id_scores, ood_scores)
    tp, accepted = _threshold_counts(id_s, ood_s)
    recall = tp / len(id_s)
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return (steps * tp / accepted).sum().item()


def roc_curve(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(FPR, TPR) with ID positive at every distinct threshold, highest first, starting at (0, 0)."""
    id_s, ood_s = _check(id_scores, ood_scores)
    tp, accepted = _threshold_counts(id_s, ood_s)
    zero = tp.new_zeros(1)
    return torch.cat([zero, (accepted - tp) / len(ood_s)]), torch.cat([zero, tp / len(id_s)])


FPR_RULES: Dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "at-least": fpr_at_tpr, "nearest": fpr_at_tpr_nearest}
DEFAULT_FPR_RULE = "at-least"


def check_fpr_rule(rule: str) -> None:
    if rule not in FPR_RULES:
        raise ValueError(f"fpr_rule must be one of {list(FPR_RULES)} ('nearest' is the official MCM code's), "
                         f"got {rule!r}")


def metrics(fpr_rule: str = DEFAULT_FPR_RULE) -> Dict[str, Callable[[torch.Tensor, torch.Tensor], float]]:
    """The metric functions by name (fractions in [0, 1]), FPR95 by `fpr_rule`."""
    check_fpr_rule(fpr_rule)
    return {"FPR95": FPR_RULES[fpr_rule], "AUROC": auroc, "AUPR": aupr}


def evaluate(id_cosines: torch.Tensor, ood_cosines: torch.Tensor, logit_scale: float, id_local: torch.Tensor = None,
             ood_local: torch.Tensor = None, fpr_rule: str = DEFAULT_FPR_RULE,
             params: Optional[Mapping[str, float]] = None) -> Dict[str, Dict[str, float]]:
    """Every score x every metric (metrics in %), for ID and OOD cosines to the same ID class features
    (GL-MCM too when both local MCM parts are given); FPR95 by `fpr_rule`, score parameters by `params`."""
    fns = metrics(fpr_rule)
    id_scores = all_scores(id_cosines, logit_scale, id_local, params)
    ood_scores = all_scores(ood_cosines, logit_scale, ood_local, params)
    return {name: {m: 100.0 * fn(id_scores[name], ood_scores[name]) for m, fn in fns.items()}
            for name in id_scores}
