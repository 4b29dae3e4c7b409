"""The demo (`clipood-kit demo`, `make demo`): on the embedded world and the shipped tiny CLIP, zero-shot,
plain fine-tuning, the ablations and CLIPood under the open-world protocol (train on base classes of two
styles; test train/unseen styles x base/new classes), with results.json and a self-contained report.html.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from . import figures
from .io import write_json, write_text
from .methods import MethodConfig
from .protocols import (ExperimentConfig, Setup, encode_with_state, headline, prepare, run_method,
                        zero_shot_cells)
from .training import TrainConfig

DEMO_METHODS = ("ce", "mms", "bma", "clipood", "wise-ft", "ema")
CELLS = ("train domains / base", "train domains / new", "unseen domains / base", "unseen domains / new",
         "unseen domains / H")
OOD_SHIFT = "semantic"        # the comparison's OOD columns: new classes against the training distribution


COMPARE_METHODS = ("ce", "wise-ft", "ema", "bma", "mms", "clipood", "car-ft", "car-ft-clipood", "ogen")
# a second row for some methods: primary model -> (the other evaluated model, its row label)
SECONDARY_MODELS = {"bma": ("last", "last step"), "ema": ("last", "last step"), "last": ("teacher", "teacher")}
COMPARE_COLUMNS = ("train domains / base", "unseen domains / base", "train domains / new", "train domains / H",
                   "unseen domains / new", "unseen domains / H", "OOD AUROC (MCM)", "OOD FPR95 (MCM)")


def flat_row(cells: dict) -> Dict[str, float]:
    """One table row from scored cells: the open-world accuracies plus MCM's OOD AUROC and FPR95."""
    row = headline("open-world", cells)
    if "ood" in cells and OOD_SHIFT in cells["ood"]:
        mcm = cells["ood"][OOD_SHIFT]["MCM"]
        row["OOD AUROC (MCM)"], row["OOD FPR95 (MCM)"] = mcm["AUROC"], mcm["FPR95"]
    return row


def ood_row(cells: dict) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{shift: {score: {metric: value}}} of scored cells (every OOD score, not only MCM)."""
    return cells.get("ood", {})


def demo_experiment() -> ExperimentConfig:
    """The demo's experiment on the tiny model (2 CPU cores, about 10 s per method).

    lambda = 0.3, Beta(0.5, 0.5) and the cosine schedule are the official code's domain-shift and base-to-new
    settings (docs/methods.md); the tiny CLIP's class text cosines are CLIP-like (see its model card), so the
    paper's lambda gives margins of the paper's size. lr 1e-4 for 120 steps makes plain fine-tuning forget
    visibly, which is what the demo shows.
    """
    return ExperimentConfig(
        per_cell=30, protocol="open-world",
        method=MethodConfig(margin_lambda=0.3, bma_alpha=0.5, bma_beta=0.5, ema_decay=0.98),
        train=TrainConfig(steps=120, batch_size=32, lr=1e-4))


@dataclass
class DemoConfig:
    seeds: Sequence[int] = (0,)
    methods: Sequence[str] = DEMO_METHODS
    experiment: ExperimentConfig = field(default_factory=demo_experiment)
    umap_points: int = 600
    columns: Sequence[str] = CELLS
    title: str = "clipood-kit demo: CLIPood on the embedded world"
    variants: Dict[str, Dict] = field(default_factory=dict)   # extra rows: label -> MethodConfig fields (with name)

    def runs(self) -> Dict[str, Dict]:
        """Every row to train: label -> MethodConfig fields to set (the methods by name, then the variants)."""
        out = {m: {"name": m} for m in self.methods}
        for label, fields in self.variants.items():
            if "name" not in fields:
                raise ValueError(f"variant {label!r} must name its method, e.g. {{'name': 'ogen', ...}}")
            out[label] = dict(fields)
        return out


# ablations (`clipood-kit compare --ablation NAME`): which part of a method does the work
ABLATIONS = {
    "ogen": {
        "ogen, no synthetic CE": {"name": "ogen", "ogen_synthetic": 0.0},
        "ogen, no distillation": {"name": "ogen", "ogen_distill": 0.0},
        "ogen, neither": {"name": "ogen", "ogen_synthetic": 0.0, "ogen_distill": 0.0},
        "ogen, no warm-up": {"name": "ogen", "ogen_warmup": 0.0},
    },
}


def compare_config(seeds: Sequence[int] = (0, 1, 2), fast: bool = False, ablation: Optional[str] = None) -> DemoConfig:
    """`clipood-kit compare`: every method on the same backbone, data, budget and metrics; with `ablation`, CE,
    the method and its ablated variants instead."""
    exp = demo_experiment()
    if fast:
        exp = replace(exp, per_cell=6, train=replace(exp.train, steps=8, batch_size=8))
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose one of {sorted(ABLATIONS)}")
        return DemoConfig(seeds=tuple(seeds), methods=("ce", ablation), experiment=exp, umap_points=0,
                          columns=COMPARE_COLUMNS, variants=ABLATIONS[ablation],
                          title=f"clipood-kit ablation: {ablation}")
    return DemoConfig(seeds=tuple(seeds), methods=COMPARE_METHODS, experiment=exp, umap_points=0 if fast else 600,
                      columns=COMPARE_COLUMNS, title="clipood-kit comparison: robust fine-tuning methods on one bench")


def _mean_std(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(per_seed: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean and std over seeds of every row and cell."""
    rows = per_seed[0].keys()
    return {r: {c: _mean_std([s[r][c] for s in per_seed]) for c in per_seed[0][r]} for r in rows}


def umap_projection(setup: Setup, states: Dict[str, Dict[str, torch.Tensor]], points: int, seed: int) -> dict:
    """Image features of `points` evaluation images under each encoder state, projected by one UMAP fitted on
    the first state's features (the zero-shot model) and applied to the others; class text features too."""
    import umap
    gen = torch.Generator().manual_seed(seed)
    pick = setup.eval_idx[torch.randperm(len(setup.eval_idx), generator=gen)[:points]].sort().values
    feats = {name: encode_with_state(setup, state, pick)["features"].numpy() for name, state in states.items()}
    names = list(states)
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1)
    coords = {names[0]: reducer.fit_transform(feats[names[0]])}
    coords.update({n: reducer.transform(feats[n]) for n in names[1:]})
    anchor = reducer.transform(setup.text_features.numpy())
    return {"coords": coords, "anchors": {n: anchor for n in names},
            "labels": setup.dataset.labels[pick].numpy(), "domains": setup.dataset.domain_ids[pick].numpy()}


def run_demo(cfg: DemoConfig, out: Path, progress: bool = True) -> dict:
    start = time.perf_counter()
    out = Path(out)
    per_seed, per_seed_ood, runs, umap_data, setup0 = [], [], {}, None, None
    for seed in tqdm(cfg.seeds, desc="seeds", disable=not progress or len(cfg.seeds) == 1):
        exp = replace(cfg.experiment, split_seed=seed, train=replace(cfg.experiment.train, seed=seed))
        setup = prepare(exp)
        zero = zero_shot_cells(setup)
        rows, ood_rows = {"zero-shot": flat_row(zero)}, {"zero-shot": ood_row(zero)}
        for name, fields in tqdm(cfg.runs().items(), desc=f"methods (seed {seed})", disable=not progress):
            result = run_method(setup, replace(exp.method, **fields), exp.train, progress=progress)
            rows[name] = flat_row(result["models"][result["primary"]])
            ood_rows[name] = ood_row(result["models"][result["primary"]])
            model, label = SECONDARY_MODELS.get(result["primary"], (None, None))
            if model in result["models"]:
                rows[f"{name} ({label})"] = flat_row(result["models"][model])
            runs.setdefault(name, []).append({k: v for k, v in result.items() if k != "states"})
            if seed == cfg.seeds[0]:
                if name == "ce":
                    ce_last = result["states"]["last"]
                if name == "clipood":
                    clipood_bma = result["states"]["bma"]
        per_seed.append(rows)
        per_seed_ood.append(ood_rows)
        if seed == cfg.seeds[0]:
            setup0 = setup
            if cfg.umap_points and "ce" in cfg.methods and "clipood" in cfg.methods:
                umap_data = umap_projection(setup, {"zero-shot": setup.zero_shot_state, "CE (last)": ce_last,
                                                    "CLIPood (BMA)": clipood_bma}, cfg.umap_points, seed)
    summary = summarise(per_seed)
    ood_summary = {method: {shift: summarise([s[method][shift] for s in per_seed_ood]) for shift in shifts}
                   for method, shifts in per_seed_ood[0].items()}
    results = {"config": {"seeds": list(cfg.seeds), "methods": list(cfg.methods), "variants": cfg.variants,
                          "columns": list(cfg.columns),
                          "title": cfg.title,
                          "experiment": asdict(cfg.experiment)},
               "setup": setup0.describe(), "summary": summary, "ood_summary": ood_summary, "per_seed": per_seed,
               "runs": runs, "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / "results.json", results)
    write_text(out / "report.html", build_report(results, setup0, umap_data))
    return results


def build_report(results: dict, setup: Setup, umap_data: Optional[dict]) -> str:
    summary = results["summary"]
    exp = results["config"]["experiment"]
    columns = results["config"]["columns"]
    rows = {m: {c: f"{v[c]['mean']:.1f} ± {v[c]['std']:.1f}" for c in columns if c in v} for m, v in summary.items()}
    d = setup.describe()
    intro = (f"<p>{len(results['config']['seeds'])} seed(s), model <code>{d['model_id']}</code>, "
             f"{len(d['base_classes'])} base and {len(d['new_classes'])} new classes; trained on base classes of "
             f"{', '.join(d['source_domains'])}; unseen styles: {', '.join(d['target_domains'])}. Base images are "
             f"classified among base names, new images among new names; H is their harmonic mean. Mean ± std over "
             f"seeds. OOD: MCM scores of new-class images in the training styles against held-out base-class images "
             f"there (ID positive). Run time {results['seconds']:.0f} s.</p>")
    accuracy_columns = [c for c in columns if not c.startswith("OOD")][:4]
    sections = [("Accuracy per method", intro + figures.table_html(rows, columns),
                 figures.accuracy_bars(summary, accuracy_columns))]
    ood = results.get("ood_summary", {})
    if ood and any(OOD_SHIFT in shifts for shifts in ood.values()):
        auroc = {m: {score: v[OOD_SHIFT][score]["AUROC"]["mean"] for score in v[OOD_SHIFT]}
                 for m, v in ood.items() if OOD_SHIFT in v}
        fpr = {m: {score: f"{v[OOD_SHIFT][score]['FPR95']['mean']:.1f}" for score in v[OOD_SHIFT]}
               for m, v in ood.items() if OOD_SHIFT in v}
        scores = list(next(iter(auroc.values())))
        sections.append(("Which OOD score after which method",
                         "<p>Every score on the semantic shift (new classes in the training styles against "
                         "held-out base-class images there), mean over seeds. Table: FPR at 95 % TPR (%, lower is "
                         "better); heatmap: AUROC (%).</p>"
                         + figures.table_html(fpr, scores), figures.score_heatmap(auroc, "AUROC (%)")))
    first_runs = {m: r[0] for m, r in results["runs"].items()}
    sections.append(("Training loss", "", figures.history_figure({m: r["history"] for m, r in first_runs.items()})))
    m = exp["method"]
    sections.append(("Beta moving average weights",
                     f"<p>w_t = BetaPDF((t + 0.5) / (T + 1); {m['bma_alpha']}, {m['bma_beta']}), T = "
                     f"{exp['train']['steps']} steps; t = 0 is the zero-shot model.</p>",
                     figures.beta_weights_figure(exp["train"]["steps"], m["bma_alpha"], m["bma_beta"])))
    sections.append(("Class-adaptive margins", "<p>MMS margin lambda * (1 - cos(t_i, t_j)) between class text "
                     "features: similar classes get small margins.</p>",
                     figures.margin_heatmap(setup.text_features, setup.dataset.classes, m["margin_lambda"],
                                           setup.dataset.families)))
    if umap_data is not None:
        for colour_by in ("class", "domain"):
            sections.append((f"Image features before and after fine-tuning (by {colour_by})",
                             "<p>One UMAP fitted on the zero-shot features; the fine-tuned models' features are "
                             "placed in the same frame. Crosses: class text features.</p>",
                             figures.embedding_figure(umap_data["coords"], umap_data["labels"], umap_data["domains"],
                                                      setup.dataset.classes, setup.dataset.domains,
                                                      umap_data["anchors"] if colour_by == "class" else None,
                                                      colour_by)))
    return figures.report_html(results["config"]["title"], sections)
