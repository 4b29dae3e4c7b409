"""Pure callback logic of the notebooks' widgets: each takes the control values and returns the data a
figure shows. The notebooks only wire sliders to these functions (and these are unit-tested)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipood_kit.engine.scoring import KIND_ORDER, label
from clipood_kit.evaluation import ood
from clipood_kit.methods import beta_weights, class_margins, margin_logits, zero_shot_share


def margin_view(text_features: torch.Tensor, classnames: Sequence[str], margin_lambda: float,
                image_feature: torch.Tensor | None = None, label: int | None = None,
                logit_scale: float = 100.0) -> Dict:
    """What the margin notebook shows for one lambda.

    - `cosine`, `margins`: C x C cosine of the class text features and lambda * (1 - cos), zero diagonal;
    - `nearest`, `farthest`: for each class, the other class with the largest / smallest text cosine (the
      smallest / largest margin when lambda > 0);
    - with an image feature and its label: the target's softmax probability without margins (plain CE) and
      with them (MMS), `softmax(z)_y` for the logits of `clipood_kit.methods.margin_logits`.
    """
    t = F.normalize(text_features.float(), dim=-1)
    cosine = (t @ t.T).numpy()
    margins = class_margins(t, margin_lambda).numpy()
    # nearest / farthest by cosine: the same classes as by margin for any lambda > 0, and defined at lambda = 0
    masked = cosine - np.diag(np.full(len(classnames), np.inf))
    nearest = [classnames[j] for j in masked.argmax(1)]
    masked = cosine + np.diag(np.full(len(classnames), np.inf))
    farthest = [classnames[j] for j in masked.argmin(1)]
    out = {"cosine": cosine, "margins": margins, "nearest": nearest, "farthest": farthest}
    if image_feature is not None and label is not None:
        f, y = image_feature.float()[None], torch.tensor([label])
        plain = margin_logits(f, t, y, 0.0, logit_scale).softmax(1)[0]
        with_margin = margin_logits(f, t, y, margin_lambda, logit_scale).softmax(1)[0]
        out.update(target_prob_plain=float(plain[label]), target_prob_margin=float(with_margin[label]),
                   probs_plain=plain.numpy(), probs_margin=with_margin.numpy())
    return out


def beta_view(total_steps: int, alpha: float, beta: float, last_fraction: float = 0.1) -> Dict:
    """What the BMA notebook shows for one (alpha, beta): normalised weights w_t / sum w, the running share of
    the zero-shot model, and in the final average the share of the zero-shot model and of the last
    `last_fraction` of the steps."""
    w = np.array(beta_weights(total_steps, alpha, beta))
    normalised = w / w.sum()
    k = max(1, int(round(last_fraction * total_steps)))
    return {"steps": np.arange(total_steps + 1), "weights": normalised,
            "zero_shot_share": np.array(zero_shot_share(list(w))),
            "final_zero_shot_share": float(normalised[0]), "final_last_share": float(normalised[-k:].sum()),
            "last_steps": k}


def nearest_farthest_table(view: Dict, classnames: Sequence[str]) -> List[Dict[str, str]]:
    return [{"class": c, "smallest margin to": n, "largest margin to": f}
            for c, n, f in zip(classnames, view["nearest"], view["farthest"])]


def ood_view(score_sets: Dict[str, Dict[str, Dict[str, torch.Tensor]]], method: str, score: str, shift: str,
             fpr_rule: str = ood.DEFAULT_FPR_RULE) -> Dict:
    """What the OOD notebook shows for one (method, score, shift): the ID and OOD scores, the ROC curve, and
    AUROC / FPR95 / AUPR (%). `score_sets[method]` comes from `scoring.ood_score_sets`."""
    sets = score_sets[method]
    if shift not in sets:
        raise ValueError(f"shift {shift!r} has no images in this experiment; it has {sorted(set(sets) - {'ID'})}")
    id_s, ood_s = sets["ID"][score], sets[shift][score]
    fpr, tpr = ood.roc_curve(id_s, ood_s)
    metrics = {name: 100.0 * fn(id_s, ood_s) for name, fn in ood.metrics(fpr_rule).items()}
    return {"id": id_s.numpy(), "ood": ood_s.numpy(), "fpr": fpr.numpy(), "tpr": tpr.numpy(), **metrics,
            "fpr95": metrics["FPR95"] / 100.0,
            "title": f"OOD: {method}, {score}, {shift} shift: AUROC {metrics['AUROC']:.1f}, "
                     f"FPR95 {metrics['FPR95']:.1f}"}


def score_table(score_sets: Dict[str, Dict[str, Dict[str, torch.Tensor]]], shift: str,
                metric: str = "AUROC", fpr_rule: str = ood.DEFAULT_FPR_RULE) -> Dict[str, Dict[str, float]]:
    """{method: {score: metric (%)}} for one shift: which score works after which method."""
    fn = ood.metrics(fpr_rule)[metric]
    return {m: {s: 100.0 * fn(sets["ID"][s], sets[shift][s]) for s in sets["ID"]}
            for m, sets in score_sets.items() if shift in sets}


def shift_table(score_sets: Dict[str, Dict[str, Dict[str, torch.Tensor]]], kinds: Dict[str, str],
                score: str = "MCM", metric: str = "AUROC", fpr_rule: str = ood.DEFAULT_FPR_RULE
                ) -> Dict[str, Dict[str, float]]:
    """{model: {'KIND: SHIFT': metric (%)}} of one score, every shift of `kinds` ({shift: 'near' | 'far' |
    'covariate'}), near first, then far, then covariate: how a score fares on near against far OOD."""
    fn = ood.metrics(fpr_rule)[metric]
    shifts = sorted(kinds, key=lambda s: KIND_ORDER.index(kinds[s]) if kinds[s] in KIND_ORDER else len(KIND_ORDER))
    return {m: {f"{kinds[s]}: {s}": 100.0 * fn(sets["ID"][score], sets[s][score]) for s in shifts if s in sets}
            for m, sets in score_sets.items()}


def kind_means(row: Dict[str, float], kind: str) -> float:
    """The mean of a `shift_table` row over the shifts of one kind (NaN when it has none)."""
    values = [v for k, v in row.items() if k.startswith(f"{kind}: ")]
    return float(np.mean(values)) if values else float("nan")


VIEW_CELLS = (("train", "base"), ("train", "new"), ("unseen", "base"), ("unseen", "new"), ("unseen", "H"))


def cells_of(scores: dict) -> Dict[str, float]:
    """The cells the notebooks' sliders show, labelled ('unseen domains / new'): accuracy of VIEW_CELLS and MCM's
    AUROC on near-OOD (the semantic shift: new classes in the training styles) and on far-OOD (the mean over the
    far sets, `scores['ood_shifts']`)."""
    out = {label(*c): scores["accuracy"][c[0]][c[1]] for c in VIEW_CELLS}
    detection = scores.get("ood", {})
    if "semantic" in detection:
        out["OOD AUROC (MCM, near)"] = detection["semantic"]["MCM"]["AUROC"]
    far = [detection[s]["MCM"]["AUROC"] for s, kind in scores.get("ood_shifts", {}).items() if kind == "far"]
    if far:
        out["OOD AUROC (MCM, far)"] = float(np.mean(far))
    return out


def page_wide(figure, delay: float = 0.5):
    """A plotly FigureWidget drawn at the page's width. Its view draws before the page attaches it, so plotly
    falls back to 700 px; once a view reports that it has drawn (its first trace deltas), an autosize relayout
    sent `delay` seconds later makes plotly measure the attached view. Window resizes are followed afterwards
    (plotly's `responsive`). Returns the figure.

    The relayout is scheduled on the kernel's own event loop (the thread that runs the widgets' callbacks), never
    from another thread: a relayout sent from a timer thread raced the callbacks' figure updates, and in Voila an
    update could then stay behind it and never reach the page. Outside a kernel the relayout is sent at once."""
    figure._config = {**figure._config, "responsive": True}
    state = {"sent": False}

    def relayout():
        figure.layout.autosize = True

    def drawn(change):
        if change["new"] and not state["sent"]:
            state["sent"] = True
            loop = _kernel_loop()
            if loop is None:
                relayout()
            else:
                loop.call_later(delay, relayout)
    figure.observe(drawn, names="_js2py_traceDeltas")
    return figure


def _kernel_loop():
    """The running IPython kernel's event loop (tornado), or None outside a kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    return getattr(kernel, "io_loop", None)


def show(*items) -> None:
    """`IPython.display.display` of widgets and figures, every plotly FigureWidget among them at the page's width."""
    from IPython.display import display
    import plotly.graph_objects as go
    for item in items:
        if isinstance(item, go.FigureWidget):
            page_wide(item)
    display(*items)
