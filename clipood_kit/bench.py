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
from typing import Dict, List, Sequence, Tuple

from tqdm.auto import tqdm

from .experiment import ExperimentConfig, prepare
from .io import write_json, write_text
from .methods import MethodConfig
from .runs import run_method
from .scoring import zero_shot_scores

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


def summarise(per_seed: List[dict]) -> dict:
    """Mean, std and values over seeds of every number of nested dicts of the same layout."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: summarise([s[k] for s in per_seed]) for k in first if all(k in s for s in per_seed)}
    values = [float(v) for v in per_seed]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def run_bench(cfg: BenchConfig, out: Path, progress: bool = True) -> dict:
    from .projection import umap_projection
    from .report import bench_report
    start = time.perf_counter()
    out = Path(out)
    per_seed, runs, umap_data, setup0 = [], {}, None, None
    for seed in tqdm(cfg.seeds, desc="seeds", disable=not progress or len(cfg.seeds) == 1):
        exp = replace(cfg.experiment, split_seed=seed, train=replace(cfg.experiment.train, seed=seed))
        setup = prepare(exp)
        rows = {"zero-shot": zero_shot_scores(setup)}
        kept = {}
        for label, method in tqdm(cfg.methods.items(), desc=f"methods (seed {seed})", disable=not progress):
            result = run_method(setup, method, exp.train, progress=progress)
            rows[label] = result["models"][result["primary"]]
            other, suffix = SECONDARY_MODELS.get(result["primary"], (None, None))
            if other in result["models"]:
                rows[f"{label} ({suffix})"] = result["models"][other]
            runs.setdefault(label, []).append({k: v for k, v in result.items() if k != "states"})
            if seed == cfg.seeds[0]:
                kept[label] = result["states"]
        per_seed.append(rows)
        if seed == cfg.seeds[0]:
            setup0 = setup
            if cfg.umap_points and "ce" in kept and "clipood" in kept:
                umap_data = umap_projection(setup, {"zero-shot": setup.zero_shot_state, "CE (last)": kept["ce"]["last"],
                                                    "CLIPood (BMA)": kept["clipood"]["bma"]}, cfg.umap_points, seed)
    results = {"config": {"title": cfg.title, "seeds": list(cfg.seeds), "columns": [list(c) for c in cfg.columns],
                          "methods": {k: m.to_dict() for k, m in cfg.methods.items()}, "settings": cfg.settings,
                          "experiment": cfg.experiment.to_dict()},
               "setup": setup0.describe(), "summary": summarise(per_seed), "per_seed": per_seed, "runs": runs,
               "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / "results.json", results)
    write_text(out / "report.html", bench_report(results, setup0, umap_data))
    return results
