"""Plotly figures of the method and its results, and the self-contained HTML report.

Each figure is built from plain data by a pure function (the notebooks' widgets call the same functions).
"""
from __future__ import annotations

import html
from typing import Dict, List, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots

from .methods import beta_weights, class_margins, zero_shot_share

# 26 distinguishable colours: every class of the world (25) and every row of the comparison get their own
MANY_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf", "#393b79", "#e7ba52", "#637939", "#843c39", "#7b4173", "#3182bd", "#f33d8a", "#31a354",
                "#756bb1", "#636363", "#fd8d3c", "#9ecae1", "#a1d99b", "#fdd0a2", "#bcbddc", "#000000"]


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
                  title: str = "Accuracy (%) per method") -> go.Figure:
    """Grouped bars: x = cells ('unseen domains / new', ...), one bar per method, error bar = std over seeds.

    `summary[method][cell] = {"mean": m, "std": s}`.
    """
    fig = go.Figure()
    low = min(row[c]["mean"] - row[c]["std"] for row in summary.values() for c in cells if c in row)
    for i, (method, row) in enumerate(summary.items()):
        fig.add_bar(name=method, x=list(cells), y=[row[c]["mean"] for c in cells],
                    marker_color=MANY_COLOURS[i % len(MANY_COLOURS)],
                    error_y=dict(type="data", array=[row[c]["std"] for c in cells], visible=True))
    fig.update_layout(barmode="group", title=title, yaxis=dict(title="accuracy (%)", range=[max(0, low - 5), 100]),
                      legend_title="method", height=520)
    return fig


def beta_weights_figure(total_steps: int, alpha: float, beta: float) -> go.Figure:
    """BMA weights w_t over steps (normalised to sum 1) and the running share of the zero-shot model."""
    w = np.array(beta_weights(total_steps, alpha, beta))
    steps = np.arange(total_steps + 1)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=steps, y=w / w.sum(), name="normalised weight w_t / sum w", mode="lines")
    fig.add_scatter(x=steps, y=zero_shot_share(list(w)), name="zero-shot share of the running average",
                    mode="lines", line=dict(dash="dot"), secondary_y=True)
    fig.update_layout(title=f"Beta moving average: Beta({alpha:g}, {beta:g}) over {total_steps} steps",
                      xaxis_title="step t (0 = zero-shot model)")
    fig.update_yaxes(title_text="weight", secondary_y=False)
    fig.update_yaxes(title_text="zero-shot share", range=[0, 1], secondary_y=True)
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
                   families: Optional[Dict[str, Sequence[str]]] = None) -> go.Figure:
    """The MMS margin matrix lambda * (1 - cos(t_i, t_j)) of the class text features, ordered by family; the colour
    range follows the off-diagonal values."""
    m = class_margins(text_features, margin_lambda).numpy()
    off = m[~np.eye(len(m), dtype=bool)]
    return class_heatmap(m, classnames, f"Class-adaptive margins, lambda = {margin_lambda:g} "
                         "(row: true class y, column: class j)", "margin", families, colorscale="Viridis",
                         zmin=float(off.min()), zmax=float(max(off.max(), off.min() + 1e-6)))


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
                     moved: Optional[Dict[str, Dict[str, float]]] = None) -> go.Figure:
    """2-D projections of the same images, one full-width panel per model (stacked) in one shared frame,
    coloured by class (26 distinct colours) or domain. `moved` ({model: {group: mean distance}}) puts each
    model's mean displacement of the features from the first model's in its panel title."""
    names = list(coords)
    titles = [n if not moved or n not in moved else
              f"{n}: features moved {', '.join(f'{g} {d:.3f}' for g, d in moved[n].items())} "
              f"(mean 1 - cos to {names[0]}'s)" for n in names]
    fig = make_subplots(rows=len(names), cols=1, subplot_titles=titles, shared_xaxes=True, shared_yaxes=True,
                        vertical_spacing=0.05)
    keys, key_names = (labels, classnames) if colour_by == "class" else (domains, domainnames)
    for col, name in enumerate(names, start=1):
        xy = coords[name]
        for k in np.unique(keys):
            m = keys == k
            fig.add_scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers",
                              marker=dict(size=5, color=MANY_COLOURS[int(k) % len(MANY_COLOURS)], opacity=0.8),
                              name=key_names[k], legendgroup=key_names[k], showlegend=col == 1, row=col, col=1)
    fig.update_layout(title=f"UMAP of what the classifier reads (cosines to the class texts), one frame; colour: "
                            f"{colour_by}",
                      height=420 * len(names) + 120, legend=dict(orientation="h", y=-0.04, font=dict(size=10)),
                      margin=dict(l=20, r=20, t=70, b=20))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def report_html(title: str, sections: List[tuple]) -> str:
    """A self-contained HTML page: `sections` are (heading, html text, figure or None); plotly.js inlined once."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th:first-child,td:first-child{text-align:left}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    first = True
    for heading, text, fig in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{text}")
        if fig is not None:
            parts.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if first else False))
            first = False
    parts.append("</body></html>")
    return "\n".join(parts)


def table_html(rows: Dict[str, Dict[str, str]], columns: Sequence[str], first: str = "method") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first, *columns])
    body = "".join("<tr><td>" + html.escape(r) + "</td>" + "".join(f"<td>{html.escape(v.get(c, ''))}</td>" for c in columns)
                   + "</tr>" for r, v in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


def score_heatmap(values: Dict[str, Dict[str, float]], metric: str) -> go.Figure:
    """Methods (rows) x OOD scores (columns) heatmap of one metric, the value printed in each cell; bright is
    better whatever the metric (the colour scale is reversed for FPR95, where lower is better)."""
    methods = list(values)
    scores = list(values[methods[0]])
    z = [[values[m][s] for s in scores] for m in methods]
    lower_better = metric.upper().startswith("FPR")
    fig = go.Figure(go.Heatmap(z=z, x=scores, y=methods, colorscale="Viridis_r" if lower_better else "Viridis",
                               colorbar={"title": metric + (" (lower is better)" if lower_better else "")},
                               text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}"))
    fig.update_layout(title=f"OOD detection: {metric} per method and score", yaxis={"autorange": "reversed"},
                      height=120 + 32 * len(methods), margin={"l": 160})
    return fig


def ood_figure(id_scores: np.ndarray, ood_scores: np.ndarray, fpr: np.ndarray, tpr: np.ndarray, title: str,
               ood_name: str = "OOD") -> go.Figure:
    """Left: histograms of one score for ID and OOD images; right: the ROC curve (ID positive)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("score histogram", "ROC curve"), horizontal_spacing=0.16)
    fig.add_histogram(x=np.asarray(id_scores), name="ID", opacity=0.6, histnorm="probability density",
                      nbinsx=40, row=1, col=1)
    fig.add_histogram(x=np.asarray(ood_scores), name=ood_name, opacity=0.6, histnorm="probability density",
                      nbinsx=40, row=1, col=1)
    fig.add_scatter(x=np.asarray(fpr), y=np.asarray(tpr), mode="lines", name="ROC", row=1, col=2)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance",
                    row=1, col=2)
    fig.add_hline(y=0.95, line={"dash": "dash", "color": "firebrick"}, row=1, col=2)
    fig.update_layout(barmode="overlay", title=title, height=420)
    fig.update_xaxes(title_text="score (higher = more in-distribution)", row=1, col=1)
    fig.update_yaxes(title_text="density (each set's histogram has area 1)", row=1, col=1)
    fig.update_xaxes(title_text="false positive rate (OOD accepted)", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="true positive rate (ID kept)", range=[0, 1.02], row=1, col=2)
    return fig


def card_figure(card: Dict) -> go.Figure:
    """Zero-shot accuracy per domain of the two things a CLIP reads from an image: its class (template ensemble)
    and its domain (CAR-FT's context classifier), from a `clipood_kit.card` card."""
    fig = go.Figure()
    for key, name in (("class_accuracy", "class (which shape?)"), ("domain_accuracy", "domain (which style?)")):
        acc = card[key]
        fig.add_bar(name=name, x=list(acc), y=list(acc.values()), text=[f"{v:.0f}" for v in acc.values()])
    fig.update_layout(barmode="group", title="Zero-shot accuracy (%) per domain: class and domain (context)",
                      yaxis=dict(title="accuracy (%)", range=[0, 100]), legend_title="predicting the")
    return fig


def cells_figure(rows: Dict[str, Dict[str, float]], title: str, y_range: Optional[Sequence[float]] = None) -> go.Figure:
    """Grouped bars: x = cells (accuracy per domain and class group, OOD AUROC), one colour per model (zero-shot
    grey, last step red); the last model's values printed on its bars (the one the notebooks' sliders move)."""
    fig = go.Figure()
    colours = {"zero-shot": "#7f7f7f", "last step": "#d62728"}
    others = iter(["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"])
    for i, (model, cells) in enumerate(rows.items()):
        last = i == len(rows) - 1
        fig.add_bar(name=model, x=list(cells), y=list(cells.values()),
                    text=[f"{v:.1f}" for v in cells.values()] if last else None, textposition="outside",
                    marker_color=colours.get(model) or next(others))
    low = min(v for cells in rows.values() for v in cells.values())
    fig.update_layout(barmode="group", title=title, height=420, legend_title="model",
                      yaxis=dict(title="%", range=list(y_range) if y_range else [max(0.0, low - 10), 100]))
    return fig


def grid_heatmap(z: Sequence[Sequence[float]], alphas: Sequence[float], betas: Sequence[float], title: str,
                 colorbar: str, marks: Dict[str, tuple] = (), references: Dict[str, float] = ()) -> go.Figure:
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
    fig.update_layout(title=title + (f" (for reference: {refs})" if refs else ""), height=460,
                      xaxis_title="beta", yaxis_title="alpha")
    return fig


def curve_figure(x: Sequence[float], curves: Dict[str, Sequence[float]], title: str, x_title: str, y_title: str,
                 references: Dict[str, float] = (), marker_x: Optional[float] = None, log_x: bool = False,
                 dotted: str = "") -> go.Figure:
    """Lines of y against x, horizontal dashed reference lines (zero-shot, last step), and an optional vertical
    marker at the slider's value. `log_x` puts x on a log axis ticked at the x values; curves whose name starts
    with `dotted` are drawn dotted (e.g. the last-step model beside its average)."""
    fig = go.Figure()
    for name, y in curves.items():
        fig.add_scatter(x=list(x), y=list(y), name=name, mode="lines+markers",
                        line=dict(dash="dot") if dotted and name.startswith(dotted) else None)
    if log_x:
        fig.update_xaxes(type="log", tickvals=list(x), ticktext=[f"{v:g}" for v in x])
    for i, (name, value) in enumerate(dict(references).items()):
        fig.add_hline(y=value, line=dict(dash="dash", color=["#7f7f7f", "#d62728", "#9467bd"][i % 3]),
                      annotation_text=f"{name} {value:.1f}", annotation_position="bottom right")
    if marker_x is not None:
        fig.add_vline(x=marker_x, line=dict(color="black", width=1))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=420)
    return fig
