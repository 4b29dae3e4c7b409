"""The lessons' findings as Markdown rendered from the run, and the answers to their predictions.

A number or claim that the run decides is never typed into a notebook's prose: these functions compute it from
the results and say it. Each `*_answer` returns the option a prediction question is checked against.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from clipood_kit.methods import averaging, beta_weights

SHAPE_OPTIONS = ("start-heavy (alpha < beta)", "symmetric (alpha = beta)", "end-heavy (alpha > beta)")
WISE_OPTIONS = ("below CE", "between CE and zero-shot", "above zero-shot")


def _pct(x: float) -> str:
    return f"{x:.1f} %"


def template_finding(table: Dict[str, Dict[str, float]]) -> str:
    """Notebook 1: which prompt set gives the best and worst mean zero-shot accuracy, and by how much."""
    means = {name: acc["mean"] for name, acc in table.items()}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    return (f"Best mean accuracy: **{best}** ({_pct(means[best])}); worst: **{worst}** ({_pct(means[worst])}), "
            f"a spread of {means[best] - means[worst]:.1f} points. The CLIP paper found the ensemble best on "
            f"ImageNet; " + ("the same holds here." if best.startswith("ensemble") else
                             "here it does not: the tiny CLIP was pretrained on captions of one form (\"a sketch of a "
                             "small red star\"), so the prompt closest to its captions can beat an average over "
                             "templates it never saw. Prompt engineering is a property of the pretraining data."))


def best_template(table: Dict[str, Dict[str, float]]) -> str:
    return max(table, key=lambda name: table[name]["mean"])


def family_finding(cosine: np.ndarray, classnames: Sequence[str], families: Dict[str, Sequence[str]] | None) -> str:
    """Notebook 2: mean text cosine within and between families (the block structure MMS reads)."""
    if not families:
        return "This dataset has no taxonomy: look for blocks of similar classes yourself."
    fam = {c: f for f, members in families.items() for c in members}
    within, between = [], []
    for i, a in enumerate(classnames):
        for j, b in enumerate(classnames):
            if i != j:
                (within if fam.get(a) == fam.get(b) else between).append(cosine[i, j])
    w, b = float(np.mean(within)), float(np.mean(between))
    return (f"Mean text cosine within a family: **{w:.2f}**; between families: **{b:.2f}**. "
            + ("Classes of one family are closer, so MMS gives them the smaller margins." if w > b else
               "There is no family structure here: MMS's margins carry no semantics."))


CURVE_OPTIONS = ("rises, then falls (best in between)", "keeps rising (best at the largest value)",
                 "keeps falling (best at the smallest value)", "flat (every change within the noise)")


def curve_shape(y: Sequence[float], noise: float) -> str:
    """The shape of a whole curve, one of CURVE_OPTIONS, read against `noise` (a difference no larger is no
    difference): flat when max - min <= noise; else where its peak sits: not above the first point by more than
    the noise ('keeps falling'), not above the last by more ('keeps rising'), or above both ('rises, then falls')."""
    arr = np.asarray(y, dtype=float)
    peak = float(arr.max())
    if peak - float(arr.min()) <= noise:
        return CURVE_OPTIONS[3]
    if peak - arr[0] <= noise:
        return CURVE_OPTIONS[2]
    if peak - arr[-1] <= noise:
        return CURVE_OPTIONS[1]
    return CURVE_OPTIONS[0]


def curve_reading(name: str, x: Sequence[float], y: Sequence[float], noise: float, x_name: str) -> str:
    """One sentence on a whole curve: its start, its peak and where it sits, its end, each change against `noise`."""
    arr = np.asarray(y, dtype=float)
    k = int(arr.argmax())
    shape = curve_shape(arr, noise)
    said = f"**{name}** starts at {_pct(arr[0])} ({x_name} = {x[0]:g})"
    if 0 < k < len(arr) - 1:
        said += (f", peaks at {_pct(arr[k])} ({x_name} = {x[k]:g}, {arr[k] - arr[0]:+.1f} points) and ends at "
                 f"{_pct(arr[-1])} ({x_name} = {x[-1]:g}, {arr[-1] - arr[k]:+.1f} from the peak)")
    else:
        said += f" and ends at {_pct(arr[-1])} ({x_name} = {x[-1]:g}, {arr[-1] - arr[0]:+.1f} points)"
    return f"{said}: it {shape}."


def lambda_finding(lambdas: Sequence[float], curves: Dict[str, Sequence[float]], zero_shot: float,
                   noise: float) -> str:
    """Notebook 2: each model's whole accuracy curve over the sweep (start, peak, end, shape against the noise of
    one image), and zero-shot's level."""
    lines = [f"- {curve_reading(name, lambdas, y, noise, 'lambda')}" for name, y in curves.items()]
    best = {name: max(y) for name, y in curves.items()}
    top = max(best, key=best.get)
    lines.append(f"- Zero-shot: {_pct(zero_shot)}; the best point of any curve ({top.split(':')[0]}, "
                 f"{_pct(best[top])}) is " + (f"{best[top] - zero_shot:+.1f} points from it"
                                              if abs(best[top] - zero_shot) > noise else "within the noise of it")
                 + f". One image is {noise:.2f} points here.")
    return "\n".join(lines)


REFERENCE_OPTIONS = ("above zero-shot at every shot count", "below zero-shot at every shot count",
                     "mixed: above, below or level depending on the shot count",
                     "level with zero-shot (within the noise) at every shot count")


def against_reference(values: Sequence[float], reference: Sequence[float], noise: float) -> str:
    """Where a curve sits against a reference curve over its whole length (one of REFERENCE_OPTIONS): each
    point's difference counts only beyond `noise`."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    above, below = bool((diff > noise).any()), bool((diff < -noise).any())
    if above and below:
        return REFERENCE_OPTIONS[2]
    if above:
        return REFERENCE_OPTIONS[0] if (diff > noise).all() else REFERENCE_OPTIONS[2]
    if below:
        return REFERENCE_OPTIONS[1] if (diff < -noise).all() else REFERENCE_OPTIONS[2]
    return REFERENCE_OPTIONS[3]


def zero_shot_share(steps: int, alpha: float, beta: float) -> float:
    """The zero-shot model's (t = 0) share of the final BMA average (`averaging.zero_shot_share`, last step)."""
    return averaging.zero_shot_share(beta_weights(steps, alpha, beta))[-1]


def shape_of(alpha: float, beta: float) -> str:
    return SHAPE_OPTIONS[0] if alpha < beta else SHAPE_OPTIONS[1] if alpha == beta else SHAPE_OPTIONS[2]


def grid_best(z: Sequence[Sequence[float]], grid: Sequence[float]) -> tuple:
    """(alpha, beta, value) of the best cell of an alpha x beta grid (the first on ties)."""
    arr = np.asarray(z, dtype=float)
    i, j = np.unravel_index(int(arr.argmax()), arr.shape)
    return grid[i], grid[j], float(arr[i, j])


def grid_finding(tables: Dict[str, Sequence[Sequence[float]]], grid: Sequence[float],
                 references: Dict[str, Dict[str, float]], images: Dict[str, int]) -> str:
    """Notebook 3: the best (alpha, beta) for each cell, against the zero-shot and last-step models, and whether
    one setting is best in both (within one image's worth of accuracy)."""
    lines, best = [], {}
    for cell, z in tables.items():
        a, b, v = grid_best(z, grid)
        best[cell] = (a, b)
        refs = ", ".join(f"{k} {_pct(r[cell])}" for k, r in references.items())
        one = 100 / images[cell]
        against = ""
        if "zero-shot" in references:
            gain = v - references["zero-shot"][cell]
            against = (" The best BMA model is within one image of zero-shot: on this cell no Beta of the grid does "
                       "better than not fine-tuning at all." if abs(gain) <= one else
                       f" The best BMA model is {gain:+.1f} points from zero-shot.")
        lines.append(f"- **{cell}**: best Beta({a:g}, {b:g}) = {_pct(v)} ({shape_of(a, b)}); {refs}; one image is "
                     f"{one:.2f} points here, so differences of that size are noise.{against}")
    cells = list(tables)
    both = [(i, j) for i in range(len(grid)) for j in range(len(grid))
            if all(tables[c][i][j] >= grid_best(tables[c], grid)[2] - 100 / images[c] for c in cells)]
    if both:
        i, j = both[0]
        lines.append(f"- Beta({grid[i]:g}, {grid[j]:g}) is within one image of the best on every cell shown.")
    else:
        lines.append("- No setting of the grid is within one image of the best on every cell: the Beta's shape "
                     "trades what the average keeps for what it gains.")
    return "\n".join(lines)


def wise_answer(wise: float, ce: float, zero_shot: float) -> str:
    """Where a WiSE-FT mix lands against CE and zero-shot on one cell."""
    low, high = min(ce, zero_shot), max(ce, zero_shot)
    return WISE_OPTIONS[0] if wise < low else WISE_OPTIONS[2] if wise > high else WISE_OPTIONS[1]


def wise_finding(mixes: Sequence[float], curve: Sequence[float], ce: float, zero_shot: float, cell: str) -> str:
    arr = np.asarray(curve)
    k = int(arr.argmax())
    return (f"On **{cell}**: zero-shot {_pct(zero_shot)}, CE {_pct(ce)}; the best mix is a = {mixes[k]:g} with "
            f"{_pct(arr[k])}, " + ("above both ends." if arr[k] > max(ce, zero_shot) else "not above both ends."))


def movement_answer(moved: Dict[str, Dict[str, float]]) -> str:
    """The model whose features moved furthest from zero-shot (mean over domain groups)."""
    return max(moved, key=lambda m: float(np.mean(list(moved[m].values()))))


def movement_finding(moved: Dict[str, Dict[str, float]], scale: Dict[str, float]) -> str:
    """Notebook 5: each model's displacement in units of the same-class spread."""
    same = scale["same class"]
    parts = [f"**{m}** moved the features by {v['unseen domains']:.4f} (unseen domains) and "
             f"{v['training domains']:.4f} (training domains), {100 * v['unseen domains'] / same:.0f} % and "
             f"{100 * v['training domains'] / same:.0f} % of the distance between two images of one class "
             f"({same:.3f})" for m, v in moved.items()]
    return "; ".join(parts) + "."


def best_score(table: Dict[str, float]) -> str:
    return max(table, key=table.get)


def near_far_answer(row: Dict[str, float]) -> str:
    """'near' or 'far': the kind of OOD a model's score detects better (mean AUROC over the shifts of that kind
    in a `viz.widgets.shift_table` row)."""
    from clipood_kit.viz.widgets import kind_means
    return "near" if kind_means(row, "near") > kind_means(row, "far") else "far"


def near_far_reading(table: Dict[str, Dict[str, float]], score: str = "MCM") -> str:
    """Notebook 6: per model, the score's AUROC on near-OOD and on each far set, and the sets it ranks below chance
    (scoring them as more in-distribution than the ID images), all from the run."""
    from clipood_kit.viz.widgets import kind_means
    lines = []
    for model, row in table.items():
        near, far = kind_means(row, "near"), kind_means(row, "far")
        below = [k.split(": ", 1)[1] for k, v in row.items() if not k.startswith("covariate") and v < 50]
        sets = ", ".join(f"{k.split(': ', 1)[1]} {v:.1f}" for k, v in row.items() if k.startswith("far: "))
        lines.append(f"- **{model}**: {score} AUROC near-OOD {near:.1f}, far-OOD {far:.1f} ({sets})"
                     + (f"; below chance on {', '.join(below)}" if below else ""))
    return "\n".join(lines)


def ood_reading(table: Dict[str, Dict[str, float]], logit_scale: float, text_cosine: float) -> str:
    """Notebook 6: the best score per model, how far MCM sits from chance, and the model properties that explain
    it (all from the run)."""
    lines = [f"- The model's logit scale is **{logit_scale:.0f}** (MSP's temperature is its inverse); the mean "
             f"cosine between the ID classes' text features is **{text_cosine:.2f}**."]
    for model, row in table.items():
        b = best_score(row)
        lines.append(f"- **{model}**: best score {b} (AUROC {row[b]:.1f}); MCM {row['MCM']:.1f}"
                     + (" (within 5 points of chance)" if abs(row["MCM"] - 50) < 5 else ""))
    return "\n".join(lines)


def moved_ratio(context: dict) -> float:
    """Notebook 7: the new classes' mean text-feature movement (1 - cos) over the base classes'."""
    moved = context["class_moved"]
    base = sum(moved[c] for c in context["base"]) / len(context["base"])
    new = sum(moved[c] for c in context["new"]) / len(context["new"])
    return new / base


def context_reading(context: dict) -> str:
    """Notebook 7: each context vector's nearest words before and after training, and how far it moved."""
    lines = [f"The context started as the embeddings of \"{context['init']}\"."]
    for i, (b, a, moved) in enumerate(zip(context["nearest_before"], context["nearest_after"], context["ctx_moved"])):
        fmt = lambda ws: ", ".join(f"{w['word']} ({w['cosine']:.2f})" for w in ws)     # noqa: E731
        lines.append(f"- **v{i + 1}**: before {fmt(b)}; after {fmt(a)}; moved 1 - cos = {moved:.3f}")
    moved = context["class_moved"]
    for group in ("base", "new"):
        values = [moved[c] for c in context[group]]
        lines.append(f"- {group} classes: their text features moved 1 - cos = {sum(values) / len(values):.4f} on "
                     f"average (largest: {max(context[group], key=moved.get)}, {max(values):.4f})")
    return "\n".join(lines)


def shots_finding(cells: Dict[str, Dict[str, dict]], shots: Sequence[int], methods: Sequence[str],
                  names: Dict[str, str], images: Dict[str, int]) -> str:
    """Notebook 7: each method's whole base and new curve over the shot counts (`curve_reading`, the noise one
    image of the class group: `images` {'base': n, 'new': n}), and where its new-class curve sits against
    zero-shot's."""
    lines = []
    for m in methods:
        for group in ("base", "new"):
            y = [cells[m][str(k)][group] for k in shots]
            noise = 100 / images[group]
            ref = [cells["zero-shot"][str(k)][group] for k in shots]
            lines.append(f"- {curve_reading(f'{names[m]}, {group} classes', shots, y, noise, 'shots')} Against "
                         f"zero-shot: {against_reference(y, ref, noise)}.")
    return "\n".join(lines)


def shots_label(k) -> str:
    """'1 shot', '16 shots'."""
    return f"{int(k)} shot" + ("" if int(k) == 1 else "s")


def prompt_ood_reading(cells: Dict[str, Dict[str, dict]]) -> str:
    """Notebook 7: per method at the largest shot count, new-class accuracy and H against zero-shot, and MCM and
    max-logit AUROC on near- and far-OOD."""
    k = max(cells["zero-shot"], key=int)
    lines = []
    for method, row in cells.items():
        c = row[k]
        lines.append(f"- **{method}**{'' if method == 'zero-shot' else f' ({shots_label(k)})'}: base {c['base']:.1f}, new {c['new']:.1f}, H {c['H']:.1f}; AUROC "
                     f"near-OOD MCM {c['near MCM']:.1f} / max-logit {c['near max-logit']:.1f}, far-OOD MCM "
                     f"{c['far MCM']:.1f} / max-logit {c['far max-logit']:.1f}")
    return "\n".join(lines)
