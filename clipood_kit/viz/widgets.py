"""Pure callback logic of the notebooks' widgets: each takes the control values and returns the data a
figure shows. The notebooks only wire sliders to these functions (and these are unit-tested)."""
from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence

import numpy as np
import plotly.graph_objects as go
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


class LiveFigure(go.Figure):
    """A plotly figure that a widget callback edits, shown through an ipywidgets `Output` whose `outputs` state holds
    the whole figure: every edit (a trace's values, the title, `batch_update`, `add_traces`) re-sends it.

    Why not plotly's `FigureWidget`: it sends each edit as a one-shot message (`_py2js_restyle`, `_py2js_relayout`,
    ... set and reset to None at once) while its synced state (`_widget_data`, `_widget_layout`) keeps the figure as
    it was when displayed. Voila runs every cell before the page's widget manager connects and reads the widgets'
    states, so any edit made after the display (the loss curve filled in after training) never reaches the page.
    And in Voila, in about a third of page loads, a view drops every later edit while the kernel sends them and
    the slider's other figures take them (measured: 2 to 5 stale loads of 5 to 8 for notebook 4's WiSE-FT bars;
    0 of 8 with this class). A likely cause, read in the bundled code but not traced in the browser: plotly's
    anywidget view (`widgetbundle.js`, the `render` of its default export) listens through the model proxy it got in
    `initialize`, not the one `render` gets, and anywidget removes the listeners of that proxy whenever it binds
    the model again (`model.off(null, null, INITIALIZE_MARKER)`). The `Output` widget's state is the figure itself,
    so a page that connects late, or a view made again, shows the current figure. An edit costs one figure's JSON
    (a few to a few hundred kB) and a full redraw: slider latency 0.16 to 0.6 s instead of 0.08 to 0.16 s."""

    def __init__(self, *args, **kwargs):
        self._live_ready = False
        super().__init__(*args, **kwargs)
        import ipywidgets as widgets
        self._live_output = widgets.Output(layout=widgets.Layout(width="100%"))
        self._live_batch = 0
        self._live_ready = True
        self.refresh()

    @property
    def widget(self):
        """The `Output` widget that shows the figure (what `show` displays)."""
        return self._live_output

    def refresh(self) -> None:
        """Send the whole figure to the page (done after every edit; call it after editing a trace in place)."""
        if not getattr(self, "_live_ready", False) or self._live_batch:
            return
        import plotly.io as pio
        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(self)
        shown = bundle["application/vnd.plotly.v1+json"]
        shown["config"] = {"displaylogo": False}      # not `responsive`: it sizes the plot to its container's
        if self.layout.height is None:                # height, which an Output has none of when it first draws
            shown["layout"]["height"] = 450           # plotly's own default
        self._live_output.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    @contextlib.contextmanager
    def batch_update(self):
        """Every edit inside the block, sent once at its end."""
        self._live_batch += 1
        try:
            with super().batch_update():
                yield
        finally:
            self._live_batch -= 1
        self.refresh()

    def _edited(self, *args, **kwargs):
        self.refresh()

    # plotly's BaseFigure calls these after each edit (FigureWidget sends them as messages; here: the whole figure)
    _send_addTraces_msg = _send_moveTraces_msg = _send_deleteTraces_msg = _edited
    _send_restyle_msg = _send_relayout_msg = _send_update_msg = _send_animate_msg = _edited

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return self._live_output._repr_mimebundle_(include=include, exclude=exclude)


def show(*items) -> None:
    """`IPython.display.display` of widgets and figures (a `LiveFigure` through its widget)."""
    from IPython.display import display
    display(*[item.widget if isinstance(item, LiveFigure) else item for item in items])
