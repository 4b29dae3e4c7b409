"""The bench: several methods on one experiment, over seeds, with the same backbone, data, budget and metrics
(`clipood-kit demo` and `clipood-kit compare`; their configurations are in `presets`).

Per seed, the split seed and the training seed are both the seed. Every row's scores are kept keyed by data
(`scoring`'s layout); the summary holds mean, std and the per-seed values of every number.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.core.io import check_results_dir, check_unique, write_results
from clipood_kit.engine.builder import with_seed
from clipood_kit.methods import MethodConfig, methods_for
from clipood_kit.engine.runs import check_methods, run_method
from clipood_kit.engine.scoring import zero_shot_scores
from clipood_kit.engine.presets import demo_experiment
from clipood_kit.studies.fanout import Runner, fan_out
from clipood_kit.engine.settings import set_method_fields
from clipood_kit.methods import compose

# a second row for some results: primary model -> (the other evaluated model, its row label)
SECONDARY_MODELS = {"bma": ("last", "last step"), "ema": ("last", "last step"), "last": ("teacher", "teacher")}
Path_ = Tuple[str, ...]


@dataclass
class BenchConfig:
    methods: Dict[str, MethodConfig]             # row label -> method
    experiment: ExperimentConfig
    columns: Sequence[Path_]                     # result paths shown in tables (scoring.lookup)
    title: str
    seeds: Sequence[int] = (0, 1, 2)
    umap_points: int = 0                         # > 0: UMAP of zero-shot, CE and CLIPood features (needs both rows)
    settings: Dict[str, object] = field(default_factory=dict)   # part settings applied where present (recorded)

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("the bench needs at least one seed")
        check_unique("seeds", self.seeds)


def summarise(per_seed: List[dict]) -> dict:
    """Mean, std and values over seeds of every number of nested dicts of the same layout."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: summarise([s[k] for s in per_seed]) for k in first if all(k in s for s in per_seed)}
    if isinstance(first, str):                  # a label (a shift's kind): the same in every seed
        return first
    values = [float(v) for v in per_seed]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def bench_seed(cfg: BenchConfig, seed: int, keep_states: bool, progress: bool = False) -> dict:
    """One seed of the bench (one independent job of `fan_out`): {'rows': {row: scores}, 'runs': {label: run
    record}, 'states': {label: states} when `keep_states`}."""
    setup = prepare(with_seed(cfg.experiment, seed))
    check_methods(setup, cfg.methods.values())     # every method's requirements, before any training
    rows, runs, kept = {"zero-shot": zero_shot_scores(setup)}, {}, {}
    for label, method in tqdm(cfg.methods.items(), desc=f"methods (seed {seed})", disable=not progress):
        result = run_method(setup.for_method(method), progress=progress)
        rows[label] = result["models"][result["primary"]]
        other, suffix = SECONDARY_MODELS.get(result["primary"], (None, None))
        if other in result["models"]:
            rows[f"{label} ({suffix})"] = result["models"][other]
        runs[label] = {k: v for k, v in result.items() if k != "states"}
        if keep_states:
            kept[label] = result["states"]
    return {"rows": rows, "runs": runs, "states": kept}


def run_bench(cfg: BenchConfig, out: Path, progress: bool = True, runner: Optional[Runner] = None,
              overwrite: bool = False) -> dict:
    """Every method on every seed (the seeds are independent jobs: `runner` fans them out, serial by default),
    then the summary, results.json and report.html (`out` checked before any work; finished results are
    replaced only with `overwrite`)."""
    from clipood_kit.studies.projection import umap_projection
    from clipood_kit.viz.report import bench_report
    out = check_results_dir(out, overwrite, "bench results")
    start = time.perf_counter()
    runner = runner or Runner()
    seeds = list(cfg.seeds)
    serial = runner.executor == "serial"
    jobs = [(cfg, seed, seed == seeds[0], progress and serial) for seed in seeds]
    outcomes = fan_out(bench_seed, jobs, runner, desc="seeds", progress=progress and (len(seeds) > 1 or not serial))
    per_seed = [o["rows"] for o in outcomes]
    runs = {label: [o["runs"][label] for o in outcomes] for label in cfg.methods}
    kept = outcomes[0]["states"]
    setup0 = prepare(with_seed(cfg.experiment, seeds[0]))
    umap_data = None
    if cfg.umap_points and "ce" in kept and "clipood" in kept:
        umap_data = umap_projection(setup0, {"zero-shot": setup0.zero_shot.state, "CE (last)": kept["ce"]["last"],
                                             "CLIPood (BMA)": kept["clipood"]["bma"]}, cfg.umap_points, seeds[0])
    results = {"config": {"title": cfg.title, "seeds": list(cfg.seeds), "columns": [list(c) for c in cfg.columns],
                          "methods": {k: m.to_dict() for k, m in cfg.methods.items()}, "settings": cfg.settings,
                          "experiment": cfg.experiment.to_dict()},
               "setup": setup0.describe(), "summary": summarise(per_seed), "per_seed": per_seed, "runs": runs,
               "seconds": round(time.perf_counter() - start, 1)}
    write_results(out, results, bench_report(results, setup0, umap_data))
    return results


# -- bench presets -----------------------------------------------------------------------------------------

DEMO_METHODS = methods_for("demo")          # the registry's methods of each bench (methods/registry.py)
COMPARE_METHODS = methods_for("compare")
BENCH_SETTINGS = {"ema.decay": 0.98}           # EMA's decay for 120 steps (0.99 keeps a third of the zero-shot model)
DEMO_COLUMNS = (("train", "base"), ("train", "new"), ("unseen", "base"), ("unseen", "new"), ("unseen", "H"))
COMPARE_COLUMNS = (("train", "base"), ("unseen", "base"), ("train", "new"), ("train", "H"), ("unseen", "new"),
                   ("unseen", "H"), ("ood", "semantic", "MCM", "AUROC"), ("ood", "semantic", "MCM", "FPR95"),
                   ("ood", "glyphs", "MCM", "AUROC"), ("ood", "textures", "MCM", "AUROC"))

# ablations (`clipood-kit compare --ablation NAME`): which part of a method does the work; label -> settings
ABLATIONS = {
    "ogen-ft": {
        "ogen-ft, no synthetic CE": {"ogen.synthetic": 0.0},
        "ogen-ft, no distillation": {"self-distill.weight": 0.0},
        "ogen-ft, neither": {"ogen.synthetic": 0.0, "self-distill.weight": 0.0},
        "ogen-ft, no warm-up": {"ogen.warmup": 0.0, "self-distill.start": 0.0},
    },
}


def bench_methods(names: Sequence[str], settings: Dict[str, object] = BENCH_SETTINGS) -> Dict[str, MethodConfig]:
    """The registry's methods by name, with the bench's part settings applied where a method has the part."""
    return {n: set_method_fields(compose(n), settings, only_present=True) for n in names}


def demo_bench(seeds: Sequence[int] = (0, 1, 2)) -> BenchConfig:
    return BenchConfig(methods=bench_methods(DEMO_METHODS), experiment=demo_experiment(), columns=DEMO_COLUMNS,
                       title="clipood-kit demo: CLIPood on the embedded world", seeds=tuple(seeds), umap_points=600,
                       settings=dict(BENCH_SETTINGS))


def compare_bench(seeds: Sequence[int] = (0, 1, 2), fast: bool = False, ablation: Optional[str] = None) -> BenchConfig:
    """`clipood-kit compare`: every method on the same backbone, data, budget and metrics; with `ablation`, CE,
    the method and its ablated variants instead."""
    exp = demo_experiment()
    settings = dict(BENCH_SETTINGS)
    if fast:
        exp = replace(exp, per_cell=6, train=replace(exp.train, steps=8, batch_size=8))
        settings["swad.every"] = 2               # SWAD's segments, scaled to the 8 steps
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose one of {sorted(ABLATIONS)}")
        methods = bench_methods(("ce", ablation))
        methods.update({label: set_method_fields(compose(ablation), s) for label, s in ABLATIONS[ablation].items()})
        return BenchConfig(methods=methods, experiment=exp, columns=COMPARE_COLUMNS, seeds=tuple(seeds),
                           title=f"clipood-kit ablation: {ablation}", settings=dict(BENCH_SETTINGS))
    return BenchConfig(methods=bench_methods(COMPARE_METHODS, settings), experiment=exp, columns=COMPARE_COLUMNS,
                       seeds=tuple(seeds), umap_points=0 if fast else 600, settings=settings,
                       title="clipood-kit comparison: robust fine-tuning methods on one bench")
