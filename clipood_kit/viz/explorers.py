"""A lesson's interactive view built whole: its controls, its figures and the callback that links them, so a
notebook cell holds one call and one `show`. The callbacks' numbers come from `viz.widgets` (unit-tested there)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from clipood_kit.viz.figures import cells_figure, curve_figure, image_grid, margin_heatmap, set_cells
from clipood_kit.viz.widgets import LiveFigure, cells_of, margin_view, show

LAMBDA_CELL = "unseen domains / new"          # the cell the lambda curve follows


def last_step_name(margin_lambda: float) -> str:
    """The last-step model's name at a lambda: CE when there are no margins."""
    return "CE (lambda = 0: no margins)" if margin_lambda == 0 else "MMS alone (last step)"


def margin_summary_html(view: Dict, classnames: Sequence[str], label: int, shown: int = 3) -> str:
    """One line on the chosen image at one lambda: its true class's probability in the training loss without and
    with margins, and the classes with the smallest and the largest margin from it (`margin_view` of the image)."""
    row = view["margins"][label]
    order = [j for j in np.argsort(row) if j != label]
    listed = lambda js: ", ".join(f"{classnames[j]} {row[j]:.3f}" for j in js)  # noqa: E731
    return (f"<b>true class {classnames[label]}</b>: p = {view['target_prob_plain']:.3f} without margins, "
            f"{view['target_prob_margin']:.3f} with margins. Smallest margins: {listed(order[:shown])}; "
            f"largest: {listed(order[-shown:])}")


@dataclass
class LambdaExplorer:
    """Notebook 2's lambda slider and what it moves: the margin matrix, the accuracy of the run trained with that
    lambda, the accuracy-against-lambda curve (its marker), the chosen image's class probabilities in the
    training loss, and a line of text (`margin_summary_html`)."""

    sweep: dict                      # lessons.data.lambda_lesson: {'lambdas', 'points', 'zero_shot', ...}
    zero: Dict[str, float]           # the zero-shot model's cells (`cells_of`)
    curve: Dict[str, List[float]]    # '<model>: <cell>' -> accuracy at each lambda of the sweep
    cell: str
    slider: object                   # ipywidgets.SelectionSlider
    figures: List[object]            # the image, the margins, the run's accuracy, the curve, the probabilities
    info: object                     # ipywidgets.HTML

    def show(self) -> None:
        self.figures[0].show()
        show(self.slider, *self.figures[1:], self.info)


def lambda_explorer(sweep: dict, text_features: torch.Tensor, classnames: Sequence[str],
                    families: Optional[Dict[str, Sequence[str]]], image: torch.Tensor, domain: str,
                    image_feature: torch.Tensor, label: int, logit_scale: float, start: float) -> LambdaExplorer:
    """The lambda slider over `sweep`'s lambdas (it starts at `start`), wired to its figures (`LambdaExplorer`);
    `image` (uint8, C x H x W) is the chosen image, of class `label` and style `domain`."""
    import ipywidgets as widgets
    lambdas = list(sweep["lambdas"])
    if start not in lambdas:
        raise ValueError(f"the slider's start {start} must be one of the sweep's lambdas {lambdas}")
    zero = cells_of(sweep["zero_shot"])
    by_lambda = {p["lambda"]: p for p in sweep["points"]}
    curve = {f"{name}: {LAMBDA_CELL}": [cells_of(p["models"][model])[LAMBDA_CELL] for p in sweep["points"]]
             for model, name in (("bma", "CLIPood (BMA)"), ("last", "MMS alone (last step)"))}
    largest = max(lambdas)
    shown = image_grid(image[None], 1, [domain], [classnames[label]], "the chosen image")
    shown.update_layout(height=230, width=260)
    heat = LiveFigure(margin_heatmap(text_features, classnames, largest, families))
    accuracy = LiveFigure(cells_figure({"zero-shot": zero, "CLIPood (BMA)": zero, last_step_name(start): zero},
                                       "Trained with this lambda", labelled="CLIPood (BMA)"))
    versus = LiveFigure(curve_figure(lambdas, curve, "Accuracy (%) against lambda", "lambda", "accuracy (%)",
                                     references={"zero-shot": zero[LAMBDA_CELL]}, marker_x=start, dotted="MMS"))
    probs = LiveFigure(layout=dict(title="the chosen image: class probabilities in the training loss",
                                   yaxis=dict(title="probability", range=[0, 1]), height=380,
                                   legend=dict(orientation="h", y=1.12)))
    probs.add_bar(name="without margins (CE)", x=list(classnames), y=np.zeros(len(classnames)), marker_color="#d62728")
    probs.add_bar(name="with margins (MMS)", x=list(classnames), y=np.zeros(len(classnames)), marker_color="#ff7f0e")
    slider = widgets.SelectionSlider(options=lambdas, value=start, description="lambda",
                                     layout=widgets.Layout(width="60%"))
    info = widgets.HTML()

    def render(lam: float) -> None:
        view = margin_view(text_features, classnames, lam, image_feature, label, logit_scale)
        with heat.batch_update():
            heat.data[0].z = margin_heatmap(text_features, classnames, lam, families, largest_lambda=largest).data[0].z
            heat.layout.title = f"Class-adaptive margins, lambda = {lam:g} (row: true class y, column: class j)"
        point = by_lambda[float(lam)]
        with accuracy.batch_update():
            set_cells(accuracy, 1, cells_of(point["models"]["bma"]))
            set_cells(accuracy, 2, cells_of(point["models"]["last"]), last_step_name(lam))
            accuracy.layout.title = f"Trained with lambda = {lam:g}"
        versus.layout.shapes[-1].x0 = versus.layout.shapes[-1].x1 = lam
        with probs.batch_update():
            probs.data[0].y, probs.data[1].y = view["probs_plain"], view["probs_margin"]
        info.value = margin_summary_html(view, classnames, label)

    slider.observe(lambda change: render(change["new"]), names="value")
    render(start)
    return LambdaExplorer(sweep, zero, curve, LAMBDA_CELL, slider, [shown, heat, accuracy, versus, probs], info)


__all__ = ["LambdaExplorer", "lambda_explorer", "margin_summary_html", "last_step_name", "LAMBDA_CELL"]
