"""The study of how fine-tuning affects OOD detection (`clipood-kit study ood-after-finetuning`), after Ming & Li,
"How Does Fine-Tuning Impact Out-of-Distribution Detection for Vision-Language Models?" (IJCV 2023).

The paper adapts CLIP few-shot (1 to 16 images per class) with prompt learning (CoOp, CoCoOp) and adapters
(CLIP-Adapter, Tip-Adapter), then scores OOD detection with MCM, MSP, max-logit and energy on far-OOD sets
(iNaturalist, SUN, Places, Textures for ImageNet) and near ones. Here the same grid runs on one experiment:

    methods x shots x seeds   training runs (each an independent job, fanned out by `studies.fanout`)
    x scores x shifts         scored per run: every OOD score on every near and far shift, and ID accuracy

The task is the world's prompt-learning task (preset `tiny-world-prompt`: blueprint, the style pretraining saw
rarely, with its own template). The ID images are held-out images of the base classes in the training style; near-OOD are the new
classes there (`semantic`), far-OOD the world's `glyphs` and `textures` in that style (`data.far_ood`) and any
`--ood-data` folder.
Each method trains with the budget of its official schedule (`BUDGETS`: epochs per shot count, batch, optimiser, lr
and schedule; full fine-tuning keeps the experiment's steps, batch and lr). Zero-shot trains nothing and is scored
once per seed (its numbers do not depend on the shots).

`findings` turns the table into the paper's claims, each marked as holding or not on this bench.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from clipood_kit.core.io import check_results_dir, check_unique, write_results
from clipood_kit.engine.builder import with_seed
from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.engine.presets import get_preset
from clipood_kit.engine.runs import check_methods, run_method
from clipood_kit.engine.scoring import shift_kinds, zero_shot_scores
from clipood_kit.engine.training import TrainConfig
from clipood_kit.methods import METHODS, FewShotBudget, budgets, compose, methods_for
from clipood_kit.studies.fanout import Runner, fan_out
from clipood_kit.viz.report import budget_rows

STUDY = "ood-after-finetuning"
ZERO_SHOT = "zero-shot"
# the methods registered for the study (methods/registry.py: the paper's methods the bench has, OGEN in its own
# setting and the image-encoder fine-tuning ones beside them), each with its registered official budget
STUDY_METHODS = (ZERO_SHOT, *methods_for("study"))
PAPER_METHODS_MISSING = ()           # the paper's methods the bench lacks (named in the results, never faked)
STUDY_SHOTS = (1, 2, 4, 8, 16)
STUDY_SEEDS = (0, 1, 2)
# Full fine-tuning (CE, CLIPood, OGEN-FT, FLYP) has no official few-shot schedule: it keeps the study experiment's
# steps, batch and AdamW at 1e-4.
DEFAULT_LR = 1e-4
BUDGETS: Dict[str, FewShotBudget] = budgets()


def budget_train(budget: FewShotBudget, base: TrainConfig, shots: int) -> TrainConfig:
    """The training config of an official few-shot budget at `shots` (an epoch is `dassl_steps_per_epoch` steps;
    a budget counted in steps sets them)."""
    counted = (dict(epochs=None, steps=budget.steps_for(shots)) if budget.steps_per_shot
               else dict(epochs=budget.epochs_for(shots)))
    return replace(base, batch_size=budget.batch_size, lr=budget.lr, optimizer=budget.optimizer,
                   schedule=budget.schedule, weight_decay=budget.weight_decay, **counted)


# The methods of the paper's claims (Ming & Li 2023 compared CoOp and CoCoOp, and the adapters), a statement about
# the paper, not about the registry
PROMPT_METHODS = ("coop", "cocoop")
ADAPTER_METHODS = ("clip-adapter", "tip-adapter", "tip-adapter-f")


def study_experiment(fast: bool = False) -> ExperimentConfig:
    """The study's experiment: the world's prompt-learning task (preset `tiny-world-prompt`, `engine.presets`:
    blueprint trains on the base classes; new classes are near-OOD, photo the unseen domain), the shots set per run;
    full fine-tuning takes 80 steps of batch 32 (the prompt methods and adapters take their official budgets,
    `BUDGETS`). `fast`: a tiny version for tests."""
    exp = get_preset("tiny-world-prompt")
    if fast:
        return replace(exp, per_cell=6, train=TrainConfig(steps=4, batch_size=8, lr=DEFAULT_LR))
    return exp


@dataclass
class StudyConfig:
    experiment: ExperimentConfig = field(default_factory=study_experiment)
    methods: Sequence[str] = STUDY_METHODS
    shots: Sequence[int] = STUDY_SHOTS
    seeds: Sequence[int] = STUDY_SEEDS
    official_budgets: bool = True        # False: every method at the experiment's steps, batch and lr (fast tests)

    def __post_init__(self):
        unknown = [m for m in self.methods if m != ZERO_SHOT and m not in METHODS]
        if unknown:
            missing = [m for m in unknown if m in PAPER_METHODS_MISSING]
            hint = f" ({missing} are the paper's but not built in this bench yet)" if missing else ""
            raise ValueError(f"unknown study method(s) {unknown}{hint}; choose from {[ZERO_SHOT, *METHODS]}")
        if not self.shots or any(not isinstance(k, int) or k < 1 for k in self.shots):
            raise ValueError(f"shots must be integers >= 1, got {list(self.shots)}")
        if not self.seeds:
            raise ValueError("the study needs at least one seed")
        check_unique("methods", self.methods)
        check_unique("shots", self.shots)
        check_unique("seeds", self.seeds)

    def spec(self, method: str, shots: Optional[int], seed: int) -> ExperimentConfig:
        """The experiment of one run: the seed rule of `with_seed`, the shots, the method and its learning rate."""
        exp = with_seed(self.experiment, seed)
        if method == ZERO_SHOT:
            return exp
        budget = BUDGETS.get(method) if self.official_budgets else None
        train = budget_train(budget, exp.train, shots) if budget else exp.train
        return replace(exp, shots=shots, method=compose(method), train=train)


def budgets_used(cfg: StudyConfig) -> Dict[str, dict]:
    """What each trained method of the study ran with: its official budget and source, or the experiment's steps."""
    out = {}
    for m in cfg.methods:
        if m == ZERO_SHOT:
            continue
        budget = BUDGETS.get(m) if cfg.official_budgets else None
        if budget is None:
            t = cfg.experiment.train
            out[m] = {"steps": t.steps, "batch_size": t.batch_size, "lr": t.lr, "optimizer": t.optimizer,
                      "schedule": t.schedule, "source": "the study experiment's budget (no official few-shot schedule)"
                      if cfg.official_budgets else "the study experiment's budget (official budgets off)"}
        else:
            counted = ({"steps": {str(k): budget.steps_for(k) for k in cfg.shots}} if budget.steps_per_shot
                       else {"epochs": {str(k): budget.epochs_for(k) for k in cfg.shots}})
            out[m] = {**counted, "batch_size": budget.batch_size,
                      "lr": budget.lr, "optimizer": budget.optimizer, "schedule": budget.schedule,
                      "weight_decay": budget.weight_decay, "source": budget.source}
    return out


def study_job(cfg: StudyConfig, method: str, seed: int) -> List[dict]:
    """One method on one seed at every shot count (an independent job of `fan_out`): a record per run with the
    scores of the method's primary model."""
    out = []
    for shots in ([None] if method == ZERO_SHOT else cfg.shots):
        setup = prepare(cfg.spec(method, shots, seed))
        if method == ZERO_SHOT:
            scores, primary, seconds = zero_shot_scores(setup), ZERO_SHOT, 0.0
        else:
            check_methods(setup, [setup.cfg.method])
            result = run_method(setup, progress=False)
            scores, primary, seconds = result["models"][result["primary"]], result["primary"], result["seconds"]
        steps = (result.get("train_config") or {}).get("steps", 0) if method != ZERO_SHOT else 0
        out.append({"method": method, "shots": shots, "seed": seed, "model": primary, "scores": scores,
                    "train_images": len(setup.split.train_idx), "train_steps": steps, "train_seconds": seconds})
    return out


def _mean_std(values: List[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def tabulate(runs: List[dict], shots: Sequence[int]) -> Dict[str, Dict[str, dict]]:
    """{method: {shots: {'id_accuracy', 'new_accuracy', 'ood': {kind: {score: {metric: mean/std/values}}}}}} over
    seeds: ID accuracy (train domains, base classes), accuracy on the held-out classes among themselves (train
    domains, the base-to-new convention of `scoring`; absent when the protocol has none) and each score's metric averaged over the shifts of each kind.
    Zero-shot is listed at every shot count (the same numbers)."""
    table: Dict[str, Dict[str, dict]] = {}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for method in methods:
        table[method] = {}
        for k in shots:
            rs = [r for r in runs if r["method"] == method and (r["shots"] in (k, None))]
            cell = {"id_accuracy": _mean_std([r["scores"]["accuracy"]["train"]["base"] for r in rs]), "ood": {}}
            if all("new" in r["scores"]["accuracy"]["train"] for r in rs):     # the held-out classes, classified
                cell["new_accuracy"] = _mean_std([r["scores"]["accuracy"]["train"]["new"] for r in rs])
            kinds = rs[0]["scores"]["ood_shifts"]
            for kind in ("near", "far"):
                shifts = [s for s, kd in kinds.items() if kd == kind]
                if not shifts:
                    continue
                scores = rs[0]["scores"]["ood"][shifts[0]]
                cell["ood"][kind] = {
                    score: {metric: _mean_std([statistics.fmean(r["scores"]["ood"][s][score][metric] for s in shifts)
                                               for r in rs]) for metric in ("AUROC", "FPR95")}
                    for score in scores}
                cell["ood"][kind]["shifts"] = shifts
            table[method][str(k)] = cell
    return table


def _paired(table, a: str, b: str, kind: str, at: str, at_b: Optional[str] = None) -> List[float]:
    """Per-seed differences of MCM's AUROC on `kind` OOD: method `a` at `at` shots minus `b` at `at_b` (or `at`)."""
    va = table[a][at]["ood"][kind]["MCM"]["AUROC"]["values"]
    vb = table[b][at_b or at]["ood"][kind]["MCM"]["AUROC"]["values"]
    return [x - y for x, y in zip(va, vb)]


def _verdict(diffs: List[float]) -> bool:
    """A comparison holds when it holds in every seed (paired by seed), not only on the mean."""
    return all(d > 0 for d in diffs)


def findings(table: Dict[str, Dict[str, dict]], shots: Sequence[int]) -> List[dict]:
    """The paper's claims, checked on the table at the largest shot count: [{'claim', 'holds', 'evidence'}]. A
    comparison of two methods holds when it holds in every seed (paired by seed: the same split and draws);
    'holds' is None when the study lacks the methods a claim needs."""
    k = str(max(shots))
    out = []
    # the kinds every method was scored on (a folder study without --ood-data has no far-OOD set)
    kinds = [kind for kind in ("far", "near") if all(kind in row[k]["ood"] for row in table.values())]

    def auroc(method: str, kind: str, score: str = "MCM", at: str = k) -> float:
        return table[method][at]["ood"][kind][score]["AUROC"]["mean"]

    def diffs_text(d: List[float]) -> str:
        return "per seed " + ", ".join(f"{x:+.1f}" for x in d)

    prompt = [m for m in PROMPT_METHODS if m in table]
    for kind in kinds:
        if ZERO_SHOT in table and prompt:
            d = {m: _paired(table, m, ZERO_SHOT, kind, k) for m in prompt}
            out.append({"claim": f"Prompt learning detects {kind}-OOD better than zero-shot (MCM, {k} shots)",
                        "holds": all(_verdict(v) for v in d.values()),
                        "evidence": "; ".join(f"{m} {auroc(m, kind):.1f} vs zero-shot {auroc(ZERO_SHOT, kind):.1f} "
                                              f"({diffs_text(d[m])})" for m in prompt)})
    tuned = [m for m in table if m != ZERO_SHOT]
    for kind in kinds:
        wins, lines = 0, []
        for m in tuned:
            row = {s: v["AUROC"]["mean"] for s, v in table[m][k]["ood"][kind].items() if s != "shifts"}
            best = max(row, key=row.get)
            wins += row["MCM"] >= row[best] - 1.0
            lines.append(f"{m}: best {best} {row[best]:.1f}, MCM {row['MCM']:.1f}")
        out.append({"claim": f"MCM is the best score (within 1 AUROC point of the best) after every adaptation "
                             f"method, {kind}-OOD ({k} shots)", "holds": wins == len(tuned) if tuned else None,
                    "evidence": "; ".join(lines)})
    adapters = [m for m in ADAPTER_METHODS if m in table]
    if prompt and adapters and "far" in kinds:
        best_p = max(prompt, key=lambda m: auroc(m, "far"))
        best_a = max(adapters, key=lambda m: auroc(m, "far"))
        d = _paired(table, best_p, best_a, "far", k)
        out.append({"claim": f"Prompt learning detects far-OOD better than adapters (MCM, {k} shots, the best of "
                             f"each)", "holds": _verdict(d),
                    "evidence": f"{best_p} {auroc(best_p, 'far'):.1f} vs {best_a} {auroc(best_a, 'far'):.1f} "
                                f"({diffs_text(d)})"})
    if "ogen" in table and "coop" in table and "new_accuracy" in table["ogen"][k]:
        # OGEN's own claim (Zang et al. 2024, Table 1: base-to-new): its synthetic unknown-class features and
        # self-distillation raise new-class accuracy over CoOp, which it builds on
        va, vb = (table[m][k]["new_accuracy"]["values"] for m in ("ogen", "coop"))
        d = [x - y for x, y in zip(va, vb)]
        out.append({"claim": f"OGEN classifies the held-out (new) classes better than CoOp ({k} shots)",
                    "holds": _verdict(d),
                    "evidence": f"ogen {statistics.fmean(va):.1f} vs coop {statistics.fmean(vb):.1f} ({diffs_text(d)})"})
    small = str(min(shots))
    if prompt and small != k and "far" in kinds:
        d = {m: _paired(table, m, m, "far", k, small) for m in prompt}
        out.append({"claim": f"More shots help prompt learning's far-OOD detection ({small} -> {k} shots, MCM)",
                    "holds": all(_verdict(v) for v in d.values()),
                    "evidence": "; ".join(f"{m} {auroc(m, 'far', at=small):.1f} -> {auroc(m, 'far'):.1f} "
                                          f"({diffs_text(d[m])})" for m in prompt)})
    return out


def run_study(cfg: StudyConfig, out: Path, runner: Optional[Runner] = None, progress: bool = True,
              overwrite: bool = False) -> dict:
    """Every (method, seed) job through `runner` (serial by default); results.json and report.html in `out`
    (checked before any work; finished results are replaced only with `overwrite`)."""
    from clipood_kit.viz.report import study_report
    out = check_results_dir(out, overwrite, "study")
    start = time.perf_counter()
    setup = prepare(cfg.spec(ZERO_SHOT, None, cfg.seeds[0]))       # every input checked before any job runs
    check_methods(setup, [compose(m) for m in cfg.methods if m != ZERO_SHOT])
    jobs = [(cfg, m, s) for m in cfg.methods for s in cfg.seeds]
    runs = [r for job in fan_out(study_job, jobs, runner or Runner(), desc="study runs", progress=progress)
            for r in job]
    table = tabulate(runs, cfg.shots)
    results = {"study": STUDY, "config": {"methods": list(cfg.methods), "shots": list(cfg.shots),
                                          "seeds": list(cfg.seeds), "experiment": cfg.experiment.to_dict(),
                                          "budgets": budgets_used(cfg),
                                          "not_built": list(PAPER_METHODS_MISSING)},
               "setup": setup.describe(), "shift_kinds": shift_kinds(setup), "table": table,
               "findings": findings(table, cfg.shots), "runs": runs,
               "runner": {"executor": (runner or Runner()).executor, "workers": (runner or Runner()).workers},
               "seconds": round(time.perf_counter() - start, 1)}
    write_results(out, results, study_report(results))
    return results


def text_table(results: dict, kind: str = "far", score: str = "MCM") -> str:
    """Methods x shots: ID accuracy and the score's AUROC on `kind` OOD, mean ± std over seeds (the CLI's output)."""
    shots = results["config"]["shots"]
    table = results["table"]
    width = max(len(m) for m in table) + 2
    head = f"{'method':<{width}}" + "".join(f"{f'{k}-shot':>26}" for k in shots)
    lines = [f"ID accuracy (%) | {score} AUROC {kind}-OOD (%), mean ± std over {len(results['config']['seeds'])} "
             f"seeds", head]
    for m, row in table.items():
        cells = []
        for k in shots:
            c = row[str(k)]
            a, o = c["id_accuracy"], c["ood"].get(kind, {}).get(score, {}).get("AUROC")
            text = f"{a['mean']:.1f}±{a['std']:.1f} | " + (f"{o['mean']:.1f}±{o['std']:.1f}" if o else "-")
            cells.append(f"{text:>26}")
        lines.append(f"{m:<{width}}" + "".join(cells))
    return "\n".join(lines)




def markdown_tables(results: dict) -> str:
    """The README's tables: (1) methods x shots of ID accuracy and MCM's AUROC on far-OOD, mean ± std over seeds;
    (2) each method's training steps per shot count (`budget_rows`); (3) at the largest shot count, base- and new-class accuracy and every score's AUROC on near- and far-OOD
    (means)."""
    shots, table = results["config"]["shots"], results["table"]
    ms = lambda c: f"{c['mean']:.1f} ± {c['std']:.1f}"      # noqa: E731
    lines = ["| method | " + " | ".join(f"{k} shots: ID acc / far MCM" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for m, row in table.items():
        lines.append(f"| {m} | " + " | ".join(
            f"{ms(row[str(k)]['id_accuracy'])} / "
            + (ms(row[str(k)]['ood']['far']['MCM']['AUROC']) if "far" in row[str(k)]["ood"] else "-") for k in shots) + " |")
    budgets = budget_rows(results)
    columns = list(next(iter(budgets.values()))) if budgets else []
    lines += ["", "| method (training steps) | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {m} | " + " | ".join(row[c] for c in columns) + " |" for m, row in budgets.items()]
    k = str(max(shots))
    scores = [s for s in next(iter(table.values()))[k]["ood"]["near"] if s != "shifts"]
    lines += ["", f"| method ({k} shots) | base / new acc | " + " | ".join(f"{s} near / far" for s in scores) + " |",
              "|---|---|" + "---|" * len(scores)]
    for m, row in table.items():
        o, c = row[k]["ood"], row[k]
        far = lambda s: f"{o['far'][s]['AUROC']['mean']:.1f}" if "far" in o else "-"      # noqa: E731
        new = f"{c['new_accuracy']['mean']:.1f}" if "new_accuracy" in c else "-"
        lines.append(f"| {m} | {c['id_accuracy']['mean']:.1f} / {new} | "
                     + " | ".join(f"{o['near'][s]['AUROC']['mean']:.1f} / {far(s)}" for s in scores) + " |")
    return "\n".join(lines)
