"""The bench's HTML report and its text table: results keyed by data turned into labelled rows (display only)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from clipood_kit.viz import figures
from clipood_kit.engine.experiment import Setup
from clipood_kit.engine.scoring import label, lookup

OOD_SHIFT = "semantic"        # the report's OOD section: new classes against the training distribution


def display_rows(summary: dict, columns: Sequence[Sequence[str]]) -> Dict[str, Dict[str, dict]]:
    """{row: {column label: {mean, std, values}}} for the result paths in `columns` a row has."""
    out = {}
    for row, scores in summary.items():
        cells = {}
        for path in columns:
            try:
                cells[label(*path)] = lookup(scores, tuple(path))
            except KeyError:
                continue
        out[row] = cells
    return out


def text_table(results: dict) -> str:
    """The bench's summary as fixed-width text (the CLI's output)."""
    columns = [tuple(c) for c in results["config"]["columns"]]
    rows = display_rows(results["summary"], columns)
    labels = [label(*c) for c in columns]
    short = [s.replace(" domains", "").replace("OOD ", "") for s in labels]
    width = max(len(k) for k in rows) + 2
    seeds = len(results["config"]["seeds"])
    lines = [f"{'method':<{width}}" + "".join(f"{s:>20}" for s in short)]
    for name, cells in rows.items():
        lines.append(f"{name:<{width}}" + "".join(
            f"{mean_std(cells[c], seeds):>20}" if c in cells else f"{'-':>20}" for c in labels))
    return "\n".join(lines + [f"({seeds} seed{'s' if seeds > 1 else ''}" + (": mean ± std)" if seeds > 1 else ")")])


def mean_std(cell: dict, seeds: int) -> str:
    """'87.2 ± 0.4' over several seeds; '87.2' for one seed (whose std is no spread, not a zero one)."""
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}" if seeds > 1 else f"{cell['mean']:.1f}"


def bench_report(results: dict, setup: Setup, umap_data: Optional[dict]) -> str:
    summary = results["summary"]
    exp = results["config"]["experiment"]
    columns = [tuple(c) for c in results["config"]["columns"]]
    rows = display_rows(summary, columns)
    labels = [label(*c) for c in columns]
    seeds = len(results["config"]["seeds"])
    text_rows = {m: {c: mean_std(v, seeds) for c, v in cells.items()} for m, cells in rows.items()}
    d = setup.describe()
    spread = "Mean ± std over seeds." if seeds > 1 else "One seed: no spread is shown."
    intro = (f"<p>{seeds} seed{'s' if seeds > 1 else ''}, model <code>{d['model_id']}</code>, "
             f"{len(d['base_classes'])} base and {len(d['new_classes'])} new classes; trained on base classes of "
             f"{', '.join(d['source_domains'])}; unseen domains: {', '.join(d['target_domains'])}. Base images are "
             f"classified among base names, new images among new names; H is their harmonic mean. {spread} "
             f"OOD: MCM scores of new-class images in the training domains against held-out base-class images "
             f"there (ID positive); FPR95 by the '{exp['fpr_rule']}' threshold rule. Run time "
             f"{results['seconds']:.0f} s.</p>")
    accuracy_labels = [label(*c) for c in columns if c[0] != "ood"]
    sections = [("Accuracy per method", intro + figures.table_html(text_rows, labels),
                 figures.accuracy_bars(rows, accuracy_labels, seeds=seeds))]
    ood = {m: s["ood"][OOD_SHIFT] for m, s in summary.items() if OOD_SHIFT in s.get("ood", {})}
    if ood:
        auroc = {m: {score: v[score]["AUROC"]["mean"] for score in v} for m, v in ood.items()}
        fpr = {m: {score: f"{v[score]['FPR95']['mean']:.1f}" for score in v} for m, v in ood.items()}
        scores = list(next(iter(auroc.values())))
        sections.append(("Which OOD score after which method",
                         "<p>Every score on the semantic shift (new classes in the training domains against "
                         "held-out base-class images there), mean over seeds. Table: FPR at 95 % TPR (%, lower is "
                         "better); heatmap: AUROC (%).</p>"
                         + figures.table_html(fpr, scores), figures.score_heatmap(auroc, "AUROC (%)")))
    first_runs = {m: r[0] for m, r in results["runs"].items()}
    sections.append(("Training loss", "", figures.history_figure({m: r["history"] for m, r in first_runs.items()})))
    bma = next((m["averager"] for m in results["config"]["methods"].values()
                if m["averager"] and m["averager"]["kind"] == "bma"), None)
    if bma is not None:
        sections.append(("Beta moving average weights",
                         f"<p>w_t = BetaPDF((t + 0.5) / (T + 1); {bma['alpha']}, {bma['beta']}), T = "
                         f"{exp['train']['steps']} steps; t = 0 is the zero-shot model.</p>",
                         figures.beta_weights_figure(exp["train"]["steps"], bma["alpha"], bma["beta"])))
    mms = next((m["loss"] for m in results["config"]["methods"].values() if m["loss"]["kind"] == "mms"), None)
    if mms is not None:
        sections.append(("Class-adaptive margins", "<p>MMS margin lambda * (1 - cos(t_i, t_j)) between class text "
                         "features: similar classes get small margins.</p>",
                         figures.margin_heatmap(setup.text_features, setup.dataset.classes, mms["margin_lambda"],
                                                setup.dataset.families)))
    if umap_data is not None:
        for colour_by in ("class", "domain"):
            sections.append((f"Image features before and after fine-tuning (by {colour_by})",
                             "<p>The same images (as many per style) under each model, read as the classifier reads "
                             "them (cosines to the class texts), in one UMAP fitted on all models together: movement "
                             "between panels is what fine-tuning changed.</p>",
                             figures.embedding_figure(umap_data["coords"], umap_data["labels"], umap_data["domains"],
                                                      setup.dataset.classes, setup.dataset.domains, colour_by,
                                                      umap_data.get("moved"))))
    return figures.report_html(results["config"]["title"], sections)
