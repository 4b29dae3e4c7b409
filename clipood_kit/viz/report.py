"""The HTML reports (a self-contained page, its tables) and the text table: results keyed by data turned into
labelled rows (display only)."""
from __future__ import annotations

import html
from typing import Dict, List, Optional, Sequence

import plotly.io as pio

from clipood_kit.viz import figures
from clipood_kit.engine.experiment import Setup
from clipood_kit.engine.scoring import label, lookup

OOD_SECTIONS = {                # the report's OOD sections: the shifts of one kind, against the training distribution
    "near": "near-OOD: new classes in the training domains, each with a sibling of its family among the base classes",
    "far": "far-OOD: images of no class and no relative of one (the world's glyphs and textures; --ood-data folders)",
}


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
    cols = [max(16, len(s) + 2) for s in short]             # a column as wide as its label
    lines = [f"{'method':<{width}}" + "".join(f"{s:>{w}}" for s, w in zip(short, cols))]
    for name, cells in rows.items():
        lines.append(f"{name:<{width}}" + "".join(
            f"{mean_std(cells[c], seeds):>{w}}" if c in cells else f"{'-':>{w}}" for c, w in zip(labels, cols)))
    return "\n".join(lines + [f"({seeds} seed{'s' if seeds > 1 else ''}" + (": mean ± std)" if seeds > 1 else ")")])


def mean_std(cell: dict, seeds: int) -> str:
    """'87.2 ± 0.4' over several seeds; '87.2' for one seed (whose std is no spread, not a zero one)."""
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}" if seeds > 1 else f"{cell['mean']:.1f}"


def ood_kind_table(summary: dict, kind: str) -> Dict[str, dict]:
    """{method: {'AUROC': {score: %}, 'FPR95': {score: %}, 'shifts': [...]}}: each score's seed mean, averaged over
    the method's OOD shifts of `kind` ('near', 'far'; the results' `ood_shifts`)."""
    out = {}
    for method, scores in summary.items():
        shifts = [sh for sh, k in scores.get("ood_shifts", {}).items() if k == kind and sh in scores.get("ood", {})]
        if not shifts:
            continue
        per = [scores["ood"][sh] for sh in shifts]
        out[method] = {metric: {score: sum(p[score][metric]["mean"] for p in per) / len(per) for score in per[0]}
                       for metric in ("AUROC", "FPR95")}
        out[method]["shifts"] = shifts
    return out


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
             f"OOD: MCM scores of OOD images against held-out base-class images of the training domains (ID "
             f"positive), near-OOD (new classes there) and far-OOD kept apart; FPR95 by the '{exp['fpr_rule']}' threshold rule. Run time "
             f"{results['seconds']:.0f} s.</p>")
    accuracy_labels = [label(*c) for c in columns if c[0] != "ood"]
    sections = [("Accuracy per method", intro + table_html(text_rows, labels),
                 figures.accuracy_bars(rows, accuracy_labels, seeds=seeds))]
    for kind, what in OOD_SECTIONS.items():
        table = ood_kind_table(summary, kind)
        if not table:
            continue
        shifts = sorted({sh for m in table.values() for sh in m["shifts"]})
        auroc = {m: v["AUROC"] for m, v in table.items()}
        fpr = {m: {score: f"{x:.1f}" for score, x in v["FPR95"].items()} for m, v in table.items()}
        sections.append((f"Which OOD score after which method: {kind}-OOD",
                         f"<p>{what}. Every score, mean over seeds and over the {kind} sets ({', '.join(shifts)}). "
                         "Table: FPR at 95 % TPR (%, lower is better); heatmap: AUROC (%).</p>"
                         + table_html(fpr, list(next(iter(fpr.values())))),
                         figures.score_heatmap(auroc, f"AUROC (%), {kind}-OOD")))
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
                         figures.margin_heatmap(setup.zero_shot.text_features, setup.dataset.classes, mms["margin_lambda"],
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
    return report_html(results["config"]["title"], sections)


def budget_rows(results: dict) -> Dict[str, Dict[str, str]]:
    """What each trained method ran with: the steps it took at each shot count (from the runs; one value when every
    seed took the same), batch, optimiser, lr, schedule and the source of its budget (`budgets_used`)."""
    rows = {}
    for m, b in results["config"]["budgets"].items():
        row = {}
        for k in results["config"]["shots"]:
            steps = sorted({r["train_steps"] for r in results["runs"] if r["method"] == m and r["shots"] == k})
            epochs = f" ({b['epochs'][str(k)]} ep)" if "epochs" in b else ""
            row[f"{k} shots"] = "/".join(map(str, steps)) + epochs
        row.update({"batch": str(b["batch_size"]), "optimiser": b["optimizer"], "lr": f"{b['lr']:g}",
                    "schedule": b["schedule"], "source": b["source"]})
        rows[m] = row
    return rows


def study_report(results: dict) -> str:
    """The OOD-after-fine-tuning study's report (`studies.ood_study`): ID accuracy and MCM's AUROC on near- and
    far-OOD against the shots, every score per method at the largest shot count, and the findings."""
    cfg, table = results["config"], results["table"]
    shots = cfg["shots"]
    seeds = len(cfg["seeds"])
    k = str(max(shots))
    kinds = {kind: sorted(s for s, kd in results["shift_kinds"].items() if kd == kind) for kind in ("near", "far")}
    intro = (f"<p>{len(cfg['methods'])} methods x {len(shots)} shot counts x {seeds} seeds; mean over seeds (error "
             f"bars: std). ID: held-out base-class images of the training styles. Near-OOD: "
             f"{', '.join(kinds['near'])}; far-OOD: {', '.join(kinds['far'])} (a kind's AUROC is the mean over its "
             f"sets). Not built, so not in the study: {', '.join(cfg['not_built']) or 'none'}. Run time "
             f"{results['seconds']:.0f} s ({results['runner']['executor']}, {results['runner']['workers']} "
             f"worker(s)).</p>")
    findings = "".join(f"<li><b>{'holds' if f['holds'] else ('not tested' if f['holds'] is None else 'does not hold')}"
                       f"</b>: {f['claim']}. {f['evidence']}.</li>" for f in results["findings"])
    sections = [("The paper's findings on this bench", intro + f"<ul>{findings}</ul>", None)]
    budgets = budget_rows(results)
    if budgets:
        sections.append(("Training budgets: steps per shot count (all seeds)", "<p>The few-shot methods train "
                         "with their official schedules (epochs by shot count); full fine-tuning takes the study "
                         "experiment's steps.</p>" + table_html(budgets, list(next(iter(budgets.values())))),
                         None))

    def curves(get) -> Dict[str, list]:
        return {m: [get(row[str(s)]) for s in shots] for m, row in table.items()}

    sections.append(("ID accuracy against shots", "", figures.shots_figure(
        shots, curves(lambda c: c["id_accuracy"]), "ID accuracy (%) against shots", "accuracy (%)")))
    for kind in ("far", "near"):
        if not kinds[kind]:
            continue
        sections.append((f"MCM on {kind}-OOD against shots", "", figures.shots_figure(
            shots, curves(lambda c: c["ood"][kind]["MCM"]["AUROC"]), f"MCM AUROC (%), {kind}-OOD, against shots",
            "AUROC (%), chance 50")))
        auroc = {m: {s: v["AUROC"]["mean"] for s, v in row[k]["ood"][kind].items() if s != "shifts"}
                 for m, row in table.items()}
        sections.append((f"Every score after every method, {kind}-OOD, {k} shots", "",
                         figures.score_heatmap(auroc, "AUROC (%)", f"AUROC (%), {kind}-OOD, {k} shots")))
    return report_html(f"clipood-kit study: {results['study']}", sections)
