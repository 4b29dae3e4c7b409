"""Plotly figures of the method and its results, and the self-contained HTML report.

Each figure is built from plain data by a pure function (the notebooks' widgets call the same functions).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from clipood_kit.methods import beta_weights, class_margins, zero_shot_share

# 26 distinguishable colours (Green-Armytage's alphabet, as plotly's qualitative.Alphabet): every class of the
# world (25) and every row of the comparison get their own
MANY_COLOURS = ["#AA0DFE", "#3283FE", "#85660D", "#782AB6", "#565656", "#1C8356", "#16FF32", "#F7E1A0", "#E2E2E2",
                "#1CBE4F", "#C4451C", "#DEA0FD", "#FE00FA", "#325A9B", "#FEAF16", "#F8A19F", "#90AD1C", "#F6222E",
                "#1CFFCE", "#2ED9FF", "#B10DA1", "#C075A6", "#FC1CBF", "#B00068", "#FBE426", "#FA0087"]
# one colour per model across every figure of a notebook (matched by the start of its display name) ...
MODEL_COLOURS = (("zero-shot", "#7f7f7f"), ("CE", "#d62728"), ("MMS", "#ff7f0e"), ("CLIPood", "#1f77b4"),
                 ("WiSE-FT", "#2ca02c"), ("BMA", "#9467bd"), ("EMA", "#8c564b"), ("CAR-FT", "#e377c2"),
                 ("OGEN-FT", "#9edae5"), ("OGEN", "#17becf"), ("CoOp", "#bcbd22"), ("CoCoOp", "#393b79"), ("CLIP-Adapter", "#ff9896"),
                 ("Tip-Adapter-F", "#8c6d31"), ("Tip-Adapter", "#7b4173"), ("SWAD", "#c5b0d5"), ("FLYP", "#000080"),
                 ("LP-FT", "#637939"))
# ... and one per cell (domain group / class group), from another palette than the models'
CELL_COLOURS = {("train", "base"): "#00798c", ("train", "new"): "#66a182", ("unseen", "base"): "#edae49",
                ("unseen", "new"): "#8e3b46", ("unseen", "H"): "#2e4057", ("train", "H"): "#5f4b8b"}
GROUP_COLOURS = {"base": "#1f77b4", "new": "#ff7f0e"}     # base and new classes, in every figure that splits them
# the world's four families, then a fallback for folder datasets
FAMILY_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def _fixed_colour(name: str) -> Optional[str]:
    lower = name.lower()
    for start, colour in MODEL_COLOURS:
        key = start.lower()
        if name.startswith(start) or lower == key or lower.startswith((key + " ", key + "-")):
            return colour
    return None


def model_colour(name: str) -> str:
    """The colour of a model by its display name ('CE (last step)' -> CE's red) or its registry name ('ce',
    'tip-adapter-f', 'car-ft-clipood' -> CAR-FT's). A registered method without a colour in `MODEL_COLOURS`
    ('kgcoop', 'clip-lora (last)') gets one of `MANY_COLOURS` by its place among such methods, so a new method
    needs no entry here; unknown names get black."""
    fixed = _fixed_colour(name)
    if fixed is not None:
        return fixed
    from clipood_kit.methods import REGISTRY
    unlisted = [m for m in REGISTRY if _fixed_colour(m) is None]
    key = name.lower().split(" ")[0]
    return MANY_COLOURS[unlisted.index(key) % len(MANY_COLOURS)] if key in unlisted else "#000000"


def cell_colour(cell: str) -> str:
    """The colour of a cell by its label ('unseen domains / new')."""
    group, _, cls = cell.partition(" / ")
    key = ("unseen" if group.startswith("unseen") else "train", cls.strip())
    return CELL_COLOURS.get(key, "#000000")


def image_grid(images: torch.Tensor, rows: int, row_names: Sequence[str], col_names: Sequence[str],
               title: str = "") -> go.Figure:
    """A rows x cols montage of uint8 C x H x W images (row-major), labelled by row and column names."""
    n, c, h, w = images.shape
    cols = n // rows
    grid = images[: rows * cols].view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    fig = go.Figure(go.Image(z=grid.numpy()))
    fig.update_xaxes(tickvals=[w * (i + 0.5) for i in range(cols)], ticktext=list(col_names), tickangle=-45)
    fig.update_yaxes(tickvals=[h * (i + 0.5) for i in range(rows)], ticktext=list(row_names))
    fig.update_layout(title=title, height=80 + rows * 70, margin=dict(l=80, r=10, t=40, b=80))
    return fig


def accuracy_bars(summary: Dict[str, Dict[str, Dict[str, float]]], cells: Sequence[str],
                  title: str = "Accuracy (%) per method", seeds: int = 1) -> go.Figure:
    """Grouped bars from 0: x = cells ('unseen domains / new', ...), one bar per method; error bars (std over
    seeds) only where there are several seeds. Methods whose numbers are identical in every cell share one bar,
    named for all of them.

    `summary[method][cell] = {"mean": m, "std": s}`.
    """
    groups: Dict[tuple, List[str]] = {}
    for method, row in summary.items():
        groups.setdefault(tuple(round(row[c]["mean"], 9) if c in row else None for c in cells), []).append(method)
    fig = go.Figure()
    for i, names in enumerate(groups.values()):
        row = summary[names[0]]
        label = names[0] if len(names) == 1 else f"{names[0]} (= {', '.join(names[1:])})"
        fig.add_bar(name=label, x=list(cells), y=[row[c]["mean"] if c in row else None for c in cells],
                    marker_color=MANY_COLOURS[i % len(MANY_COLOURS)],
                    error_y=dict(type="data", array=[row[c]["std"] if c in row else 0 for c in cells],
                                 visible=seeds > 1))
    note = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    fig.update_layout(barmode="group", title=f"{title} ({note})", yaxis=dict(title="accuracy (%)", range=[0, 100]),
                      legend_title="method", height=520)
    return fig


def beta_weights_figure(total_steps: int, alpha: float, beta: float, log_weights: bool = False) -> go.Figure:
    """BMA weights w_t over steps (normalised to sum 1; on a log axis with `log_weights`, where U shapes put
    orders of magnitude between the ends and the middle) and the running share of the zero-shot model."""
    w = np.array(beta_weights(total_steps, alpha, beta))
    steps = np.arange(total_steps + 1)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=steps, y=w / w.sum(), name="normalised weight w_t / sum w", mode="lines")
    fig.add_scatter(x=steps, y=zero_shot_share(list(w)), name="zero-shot share of the running average",
                    mode="lines", line=dict(dash="dot"), secondary_y=True)
    fig.update_layout(title=f"Beta moving average: Beta({alpha:g}, {beta:g}) over {total_steps} steps",
                      xaxis_title="step t (0 = zero-shot model)", legend=dict(orientation="h", y=-0.25))
    fig.update_yaxes(title_text="weight" + (" (log scale)" if log_weights else ""),
                     type="log" if log_weights else None, secondary_y=False)
    fig.update_yaxes(title_text="zero-shot share", range=[0, 1], tickvals=[0, 0.25, 0.5, 0.75, 1],
                     tickformat=".0%", secondary_y=True)
    return fig


def family_order(classnames: Sequence[str], families: Optional[Dict[str, Sequence[str]]]) -> tuple:
    """(order, boundaries): class indices grouped by family (families in their given order, members sorted) and
    the positions between families; without a taxonomy, the classes as they are and no boundaries."""
    if not families:
        return list(range(len(classnames))), []
    order, boundaries = [], []
    for members in families.values():
        idx = sorted(classnames.index(c) for c in members if c in classnames)
        if idx:
            order += idx
            boundaries.append(len(order))
    rest = [i for i in range(len(classnames)) if i not in order]
    return order + rest, boundaries[:-1] if not rest else boundaries


def class_heatmap(matrix: np.ndarray, classnames: Sequence[str], title: str, colorbar: str,
                  families: Optional[Dict[str, Sequence[str]]] = None, **heatmap) -> go.Figure:
    """A C x C class matrix (row: class i, column: class j), ordered by family with lines between families, so
    block structure (similar classes within a family) is visible."""
    order, bounds = family_order(list(classnames), families)
    names = [classnames[i] for i in order]
    fig = go.Figure(go.Heatmap(z=np.asarray(matrix)[np.ix_(order, order)], x=names, y=names,
                               colorbar=dict(title=colorbar), **heatmap))
    edge = len(names) - 0.5
    for b in bounds:
        fig.add_shape(type="line", x0=b - 0.5, x1=b - 0.5, y0=-0.5, y1=edge, line=dict(color="white", width=2))
        fig.add_shape(type="line", y0=b - 0.5, y1=b - 0.5, x0=-0.5, x1=edge, line=dict(color="white", width=2))
    fig.update_layout(title=title, yaxis=dict(autorange="reversed", dtick=1), xaxis=dict(dtick=1, tickangle=-60),
                      height=max(500, 26 * len(names) + 160), width=max(560, 26 * len(names) + 260))
    return fig


def margin_heatmap(text_features: torch.Tensor, classnames: Sequence[str], margin_lambda: float,
                   families: Optional[Dict[str, Sequence[str]]] = None, largest_lambda: Optional[float] = None) -> go.Figure:
    """The MMS margin matrix lambda * (1 - cos(t_i, t_j)) of the class text features, ordered by family, on a
    fixed colour scale from 0 to the largest margin at `largest_lambda` (default: this lambda), so that moving
    lambda visibly scales every margin."""
    m = class_margins(text_features, margin_lambda).numpy()
    top = class_margins(text_features, largest_lambda if largest_lambda is not None else margin_lambda).numpy().max()
    return class_heatmap(m, classnames, f"Class-adaptive margins, lambda = {margin_lambda:g} "
                         "(row: true class y, column: class j)", "margin", families, colorscale="Viridis",
                         zmin=0.0, zmax=float(max(top, 1e-6)))


def loss_figure(histories: Dict[str, List[dict]], names: Dict[str, str], live: bool = False) -> go.Figure:
    """Each method's training loss in its own panel (different objectives are not on one axis), in the
    method's colour; `names` maps a method key to the name of its panel: what the loss is, of which model
    ('CE', 'CLIPood: MMS loss of the trained weights'; the BMA average is never trained, so it has no loss)."""
    keys = list(names)
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[names[k] for k in keys],
                        horizontal_spacing=0.08)
    for i, key in enumerate(keys, start=1):
        hist = histories.get(key, [])
        fig.add_scatter(x=[r["step"] for r in hist], y=[r["loss"] for r in hist], mode="lines", name=names[key],
                        line=dict(color=model_colour(names[key])), row=1, col=i)
        fig.update_xaxes(title_text="step", row=1, col=i)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_layout(title="Training loss" + (" (live)" if live else ""), height=360, showlegend=False)
    return fig


def history_figure(histories: Dict[str, List[dict]]) -> go.Figure:
    """Training loss per step of each method. Methods that train identically (an averager changes the evaluated
    model, not the training: ce, bma, ema and wise-ft) share one line, named for all of them."""
    groups: Dict[tuple, List[str]] = {}
    for name, hist in histories.items():
        groups.setdefault(tuple(round(r["loss"], 9) for r in hist), []).append(name)
    fig = go.Figure()
    for i, names in enumerate(groups.values()):
        hist = histories[names[0]]
        label = names[0] if len(names) == 1 else f"{names[0]} (= {', '.join(names[1:])}: same training)"
        fig.add_scatter(x=[r["step"] for r in hist], y=[r["loss"] for r in hist], name=label, mode="lines",
                        line=dict(color=MANY_COLOURS[i % len(MANY_COLOURS)]))
    fig.update_layout(title="Training loss (methods that train alike share a line)", xaxis_title="step",
                      yaxis_title="loss", legend=dict(orientation="h", y=-0.2))
    return fig


def embedding_figure(coords: Dict[str, np.ndarray], labels: np.ndarray, domains: np.ndarray,
                     classnames: Sequence[str], domainnames: Sequence[str], colour_by: str = "class",
                     moved: Optional[Dict[str, Dict[str, float]]] = None,
                     families: Optional[Dict[str, Sequence[str]]] = None, reference: str = "zero-shot") -> go.Figure:
    """2-D projections of the same images, one full-width panel per model (stacked) in one shared frame,
    coloured by family (few colours, the semantic groups), class (26 distinct colours) or domain. `moved`
    ({model: {group: mean 1 - cos}}) puts each model's displacement from `reference` in its panel title."""
    names = list(coords)
    titles = [n if not moved or n not in moved else
              f"{n}: moved {', '.join(f'{g} {d:.3f}' for g, d in moved[n].items())} (mean 1 - cos to {reference})"
              for n in names]
    fig = make_subplots(rows=len(names), cols=1, subplot_titles=titles, shared_xaxes=True, shared_yaxes=True,
                        vertical_spacing=0.06)
    if colour_by == "family" and families:
        family_of = {classnames.index(c): i for i, members in enumerate(families.values()) for c in members
                     if c in classnames}
        keys = np.array([family_of.get(int(k), len(families)) for k in labels])
        key_names, palette = list(families) + ["other"], FAMILY_COLOURS
    elif colour_by == "domain":
        keys, key_names, palette = domains, list(domainnames), FAMILY_COLOURS
    else:
        keys, key_names, palette = labels, list(classnames), MANY_COLOURS
    for row, name in enumerate(names, start=1):
        xy = coords[name]
        for k in np.unique(keys):
            m = keys == k
            fig.add_scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers",
                              marker=dict(size=5, color=palette[int(k) % len(palette)], opacity=0.8),
                              name=key_names[k], legendgroup=key_names[k], showlegend=row == 1, row=row, col=1)
    fig.update_layout(title=f"UMAP of what the classifier reads (each image's cosines to the class texts), one frame "
                            f"for all models; colour: {colour_by}",
                      height=340 * len(names) + 140, legend=dict(orientation="h", y=-0.04, font=dict(size=11)),
                      margin=dict(l=20, r=20, t=90, b=20))
    fig.update_annotations(font_size=13)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def displacement_figure(per_class: Dict[str, Sequence[float]], classnames: Sequence[str],
                        scale: Dict[str, float], families: Optional[Dict[str, Sequence[str]]] = None) -> go.Figure:
    """How far each model moved each class's image features (mean 1 - cos to the zero-shot features of the same
    images), classes in family order, against the yardstick: the mean 1 - cos between two images of one class
    and of two classes under the zero-shot model."""
    order, _ = family_order(list(classnames), families)
    x = [classnames[i] for i in order]
    fig = go.Figure()
    for model, values in per_class.items():
        fig.add_bar(name=model, x=x, y=[values[i] for i in order], marker_color=model_colour(model))
    for i, (name, value) in enumerate(scale.items()):
        fig.add_hline(y=value, line=dict(dash=["dash", "dot"][i % 2], color="#444444"),
                      annotation_text=f"two images of {name}: {value:.3f}", annotation_position="top left")
    fig.update_layout(barmode="group", title="How far fine-tuning moved each class's image features, against the "
                      "distance between images", yaxis_title="mean 1 - cos to the zero-shot features",
                      xaxis=dict(tickangle=-60), height=460, legend_title="model")
    return fig


def score_heatmap(values: Dict[str, Dict[str, float]], metric: str, title: Optional[str] = None) -> go.Figure:
    """Methods (rows) x OOD scores (columns) heatmap of one metric, the value printed in each cell; bright is
    better whatever the metric (the colour scale is reversed for FPR95, where lower is better); `metric` names
    the colour bar, `title` the figure (default: the metric)."""
    methods = list(values)
    scores = list(values[methods[0]])
    z = [[values[m][s] for s in scores] for m in methods]
    lower_better = metric.upper().startswith("FPR")
    fig = go.Figure(go.Heatmap(z=z, x=scores, y=methods, colorscale="Viridis_r" if lower_better else "Viridis",
                               colorbar=dict(title=metric, nticks=5, thickness=14, len=0.9),
                               text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}",
                               textfont=dict(size=13)))
    better = "lower is better" if lower_better else "higher is better"
    fig.update_layout(title=title or f"OOD detection: {metric} per model and score ({better})",
                      yaxis={"autorange": "reversed"}, height=170 + 48 * len(methods), margin={"l": 170})
    return fig


def ood_figure(id_scores: np.ndarray, ood_scores: np.ndarray, fpr: np.ndarray, tpr: np.ndarray, title: str,
               ood_name: str = "OOD", fpr95: Optional[float] = None) -> go.Figure:
    """Left: histograms of one score for ID and OOD images on the same bins; right: the ROC curve (ID positive)
    with the FPR95 point (the FPR where TPR reaches 95 %), `fpr95` as a fraction."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("score histogram (shared bins)", "ROC curve"),
                        horizontal_spacing=0.16)
    both = np.concatenate([np.asarray(id_scores, dtype=float), np.asarray(ood_scores, dtype=float)])
    low, high = float(both.min()), float(both.max())
    bins = dict(start=low, end=high + 1e-12, size=max((high - low) / 40, 1e-12))
    fig.add_histogram(x=np.asarray(id_scores), name="ID", opacity=0.6, histnorm="probability density",
                      xbins=bins, autobinx=False, marker_color="#1f77b4", row=1, col=1)
    fig.add_histogram(x=np.asarray(ood_scores), name=ood_name, opacity=0.6, histnorm="probability density",
                      xbins=bins, autobinx=False, marker_color="#ff7f0e", row=1, col=1)
    fig.add_scatter(x=np.asarray(fpr), y=np.asarray(tpr), mode="lines", name="ROC", line=dict(color="#2ca02c"),
                    row=1, col=2)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance",
                    row=1, col=2)
    fig.add_hline(y=0.95, line={"dash": "dash", "color": "firebrick"}, row=1, col=2)
    if fpr95 is not None:
        fig.add_scatter(x=[fpr95], y=[0.95], mode="markers+text", marker=dict(size=11, color="firebrick"),
                        text=[f"FPR95 = {100 * fpr95:.1f} %"], name="FPR95",
                        textposition="bottom right" if fpr95 < 0.6 else "bottom left",     # inside the plot
                        row=1, col=2)
    fig.update_layout(barmode="overlay", title=title, height=440)
    fig.update_xaxes(title_text="score (higher = more in-distribution)", row=1, col=1)
    fig.update_yaxes(title_text="density (each set's histogram has area 1)", row=1, col=1)
    fig.update_xaxes(title_text="false positive rate (OOD accepted)", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="true positive rate (ID kept)", range=[0, 1.02], row=1, col=2)
    return fig


def card_figure(card: Dict) -> go.Figure:
    """Zero-shot accuracy per domain of the two things a CLIP reads from an image: its class (template ensemble)
    and its domain (CAR-FT's context classifier), from a `clipood_kit.evaluation.card` card."""
    fig = go.Figure()
    for key, name in (("class_accuracy", "class (which shape?)"), ("domain_accuracy", "domain (which style?)")):
        acc = card[key]
        fig.add_bar(name=name, x=list(acc), y=list(acc.values()), text=[f"{v:.0f}" for v in acc.values()],
                    textposition="outside", cliponaxis=False)
    fig.update_layout(barmode="group", title="Zero-shot accuracy (%) per domain: class and domain (context)",
                      yaxis=dict(title="accuracy (%)", range=[0, 112], tickvals=[0, 20, 40, 60, 80, 100]),
                      legend_title="predicting the")
    return fig


def _ood_tick(cell: str) -> str:
    """'OOD AUROC (MCM, far)' -> 'far': the OOD panel's row label."""
    inside = cell[cell.find("(") + 1:cell.rfind(")")]
    return inside.split(", ")[-1] if "(" in cell else cell


def _ood_panel_title(cells: Sequence[str]) -> str:
    """'OOD AUROC (MCM) (%)' for one OOD cell; for several, the common part without their row labels."""
    if len(cells) == 1:
        return f"{cells[0]} (%)"
    head = cells[0][:cells[0].find("(")].strip() if "(" in cells[0] else cells[0]
    score = cells[0][cells[0].find("(") + 1:].split(",")[0] if "(" in cells[0] else ""
    return f"{head} ({score}, %)" if score else f"{head} (%)"


def cells_figure(rows: Dict[str, Dict[str, float]], title: str, labelled: Optional[str] = None) -> go.Figure:
    """A dot plot of each model's numbers against the zero-shot model's (the first row, drawn as diamonds): left,
    accuracy per cell (domain group / class group); right, on its own axis, OOD AUROC with chance (50) marked.
    One line of dots per model and cell, in the model's colour; the values of `labelled` (default: the last
    model, the one the notebooks' sliders move) printed beside its dots, so no two labels share a line. The
    accuracy axis is zoomed to the values (a dot plot needs no zero baseline; the reference is the diamonds)."""
    labelled = labelled or list(rows)[-1]
    models = list(rows)
    first = next(iter(rows.values()))
    accuracy = [c for c in first if not c.startswith("OOD")]
    auroc = [c for c in first if c.startswith("OOD")]
    fig = make_subplots(rows=1, cols=2 if auroc else 1, column_widths=[0.72, 0.28] if auroc else None,
                        subplot_titles=["accuracy (%)"] + ([_ood_panel_title(auroc)] if auroc else []),
                        horizontal_spacing=0.05)
    step = 0.8 / max(1, len(models))
    for panel, cells in enumerate((accuracy, auroc), start=1):
        if not cells:
            continue
        values_here = [v[c] for v in rows.values() for c in cells]
        for i, (model, values) in enumerate(rows.items()):
            y = [k + 0.4 - step * (i + 0.5) for k in range(len(cells))]
            fig.add_scatter(x=[values[c] for c in cells], y=y, mode="markers+text" if model == labelled else "markers",
                            marker=dict(size=11, color=model_colour(model), symbol="circle" if i else "diamond"),
                            text=[f"{values[c]:.1f}" for c in cells] if model == labelled else None,
                            textposition="middle right", textfont=dict(size=12), cliponaxis=False, name=model,
                            legendgroup=str(i), showlegend=panel == 1, meta={"model": i, "cells": cells},
                            row=1, col=panel)
        ticks = cells if panel == 1 else [_ood_tick(c) for c in cells]
        fig.update_yaxes(tickvals=list(range(len(cells))), ticktext=ticks, range=[len(cells) - 0.5, -0.5],
                         showticklabels=panel == 1 or len(cells) > 1, side="left" if panel == 1 else "right",
                         row=1, col=panel)
        if panel == 1:
            low = 5 * int(max(0.0, min(values_here) - 6) // 5)
            fig.update_xaxes(range=[low, 101], dtick=5 if 100 - low <= 30 else 10, title_text="accuracy (%)",
                             row=1, col=1)
        else:
            low = 10 * int(min(40.0, min(values_here) - 5) // 10)
            high = min(100, 10 * -int(-(max(60.0, max(values_here) + 8)) // 10))
            fig.update_xaxes(range=[low, high], dtick=10, title_text="AUROC (%), chance 50", row=1, col=2)
            fig.add_vline(x=50, line=dict(dash="dot", color="#999999"), row=1, col=2)
    fig.update_layout(title=title, height=160 + 60 * max(len(accuracy), 1), margin=dict(l=160, r=30, t=130),
                      legend=dict(orientation="h", y=1.14, yanchor="bottom", x=0, xanchor="left", title=None))
    return fig


def set_cells(fig: go.Figure, index: int, values: Dict[str, float], name: Optional[str] = None) -> None:
    """Put new values into the dots of the `index`-th model of a `cells_figure` (both panels, labels too), and
    rename it (a slider's update of a FigureWidget)."""
    for trace in fig.data:
        if trace.meta and trace.meta["model"] == index:
            trace.x = [values[c] for c in trace.meta["cells"]]
            if trace.text is not None:
                trace.text = [f"{values[c]:.1f}" for c in trace.meta["cells"]]
            if name is not None:
                trace.name = name
                trace.marker.color = model_colour(name)


def grid_heatmap(z: Sequence[Sequence[float]], alphas: Sequence[float], betas: Sequence[float], title: str,
                 colorbar: str, marks: Dict[str, tuple] = (), references: Dict[str, float] = (),
                 images: Optional[int] = None) -> go.Figure:
    """A value over an (alpha, beta) grid (alpha down, beta across, on log-spaced category axes), each cell
    printed; `marks` {label: (alpha, beta)} outlined (the paper's settings); `references` {label: value} named
    in the title (the last-step and zero-shot models)."""
    x, y = [f"{b:g}" for b in betas], [f"{a:g}" for a in alphas]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, colorscale="Viridis", colorbar={"title": colorbar},
                               text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}"))
    for label, (a, b) in dict(marks).items():
        if f"{a:g}" in y and f"{b:g}" in x:
            i, j = y.index(f"{a:g}"), x.index(f"{b:g}")
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="red", width=3))
            fig.add_annotation(x=j, y=i + 0.32, text=label, showarrow=False, font=dict(color="red", size=11),
                               bgcolor="white")
    refs = ", ".join(f"{k} {v:.1f}" for k, v in dict(references).items())
    notes = ([f"for reference: {refs}"] if refs else []) + (
        [f"{images} images: one image = {100 / images:.2f} points"] if images else [])
    fig.update_layout(title=title + (f"<br><sup>{'; '.join(notes)}</sup>" if notes else ""), height=480,
                      xaxis_title="beta", yaxis_title="alpha", margin=dict(t=90))
    return fig


def curve_figure(x: Sequence[float], curves: Dict[str, Sequence[float]], title: str, x_title: str, y_title: str,
                 references: Dict[str, float] = (), marker_x: Optional[float] = None, log_x: bool = False,
                 dotted: str = "", y_range: Optional[Sequence[float]] = None,
                 colours: Optional[Dict[str, str]] = None, tick_names: Optional[Dict[float, str]] = None) -> go.Figure:
    """Lines of y against x, horizontal dashed reference lines (zero-shot, last step), and an optional vertical
    marker at the slider's value. A curve named 'MODEL: CELL' takes its cell's colour (so the average and the
    last step of one cell share a colour; `colours` maps a CELL to a colour of the caller's), else its model's;
    curves whose name starts with `dotted` are drawn dotted (e.g. the last-step model beside its average).
    `log_x` puts x on a log axis ticked at the x values; `tick_names` names some x values on the axis (the ends of
    an interpolation: {0: 'zero-shot', 1: 'CE'}), the others ticked by value."""
    fig = go.Figure()
    for name, y in curves.items():
        cell = name.split(": ", 1)[-1]
        colour = (colours or {}).get(cell) or (cell_colour(cell) if cell_colour(cell) != "#000000"
                                               else model_colour(name))
        fig.add_scatter(x=list(x), y=list(y), name=name, mode="lines+markers",
                        line=dict(color=colour, dash="dot" if dotted and name.startswith(dotted) else None))
    if log_x:
        fig.update_xaxes(type="log", tickvals=list(x), ticktext=[f"{v:g}" for v in x])
    if tick_names:
        fig.update_xaxes(tickvals=list(x), ticktext=[f"{v:g}<br>{tick_names[v]}" if v in tick_names else f"{v:g}"
                                                     for v in x])
    for name, value in dict(references).items():
        fig.add_hline(y=value, line=dict(dash="dash", color=model_colour(name)),
                      annotation_text=f"{name} {value:.1f}", annotation_position="bottom right")
    if marker_x is not None:
        fig.add_vline(x=marker_x, line=dict(color="black", width=1))
    if y_range is None:                # every curve and reference line inside the plot, none on its edge
        values = [float(v) for y in curves.values() for v in y if v == v] + [float(v) for v in dict(references).values()]
        if values:
            pad = max(0.08 * (max(values) - min(values)), 0.5)
            y_range = (min(values) - pad, max(values) + pad)
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=440,
                      legend=dict(orientation="h", y=-0.22), yaxis=dict(range=list(y_range) if y_range else None))
    return fig


def shots_figure(shots: Sequence[int], cells: Dict[str, Sequence[dict]], title: str, y_title: str) -> go.Figure:
    """One line per method of a number against the shots (log axis), mean with std error bars over seeds;
    `cells[method]` holds a {mean, std} per shot count."""
    fig = go.Figure()
    for method, row in cells.items():
        fig.add_scatter(x=list(shots), y=[c["mean"] for c in row], name=method, mode="lines+markers",
                        error_y=dict(type="data", array=[c["std"] for c in row], visible=True),
                        line=dict(color=model_colour(method), dash="dash" if method == "zero-shot" else None))
    fig.update_xaxes(type="log", tickvals=list(shots), ticktext=[f"{s:g}" for s in shots], title_text="shots per class")
    fig.update_layout(title=title, yaxis_title=y_title, height=440, legend=dict(orientation="h", y=-0.22))
    return fig



def class_shift_figure(moved: Dict[str, float], groups: Dict[str, Sequence[str]], title: str) -> go.Figure:
    """One bar per class of how far its text feature moved (1 - cos), grouped and coloured by `groups`
    ({'base': [...], 'new': [...]}), largest first within a group."""
    fig = go.Figure()
    colours = GROUP_COLOURS
    for group, names in groups.items():
        ordered = sorted(names, key=lambda c: -moved[c])
        fig.add_bar(x=ordered, y=[moved[c] for c in ordered], name=f"{group} classes",
                    marker_color=colours.get(group, model_colour(group)))
    fig.update_layout(title=title, yaxis_title="1 - cos(before, after)", height=420,
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0), bargap=0.2)
    return fig


def word_cosine_heatmap(cosines, rows: Sequence[str], words: Sequence[str], title: str) -> go.Figure:
    """Context vectors (rows) x vocabulary words (columns): their cosine similarity."""
    fig = go.Figure(go.Heatmap(z=np.asarray(cosines), x=list(words), y=list(rows), colorscale="RdBu", zmid=0,
                               colorbar=dict(title="cos")))
    fig.update_layout(title=title, height=200 + 40 * len(rows), xaxis=dict(tickangle=-60))
    return fig
