"""Sweeps over the parameters users tune by hand: lambda (one run per value, cached on disk), and, from one
run's trajectory without retraining, BMA's (alpha, beta) and the WiSE-FT mix. Every point is scored on every
cell and OOD (`scoring.StateScorer`); `clipood-kit sweep` writes them as JSON and figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from clipood_kit.core import store
from clipood_kit.engine.experiment import ExperimentConfig, Setup, inputs_identity, prepare
from clipood_kit.core.io import check_results_dir, check_unique, write_results
from clipood_kit.methods import Method, MethodConfig
from clipood_kit.engine.posthoc import Trajectory
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import StateScorer, zero_shot_scores
from clipood_kit.engine.settings import set_method_fields
from clipood_kit.studies.fanout import Runner, fan_out


def trajectory_for(setup: Setup, every: int = 1) -> Trajectory:
    """An empty trajectory of the spec's method, started at its zero-shot model state (what it trains)."""
    method = Method(setup.cfg.method)
    model = setup.prepare_method(method)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return Trajectory(setup.cfg.train.steps, every).start(model.trained_state(), names)


def record_run(setup: Setup, every: int = 1, progress: bool = False) -> Dict:
    """One run of the spec's method with its trajectory recorded: {'result', 'trajectory'}."""
    traj = trajectory_for(setup, every)
    result = run_method(setup, progress=progress, on_step=traj.recorder())
    return {"result": result, "trajectory": traj}


def bma_grid(traj: Trajectory, scorer: StateScorer, alphas: Sequence[float], betas: Sequence[float],
             progress: bool = False) -> List[List[dict]]:
    """scores[i][j] of the BMA model with Beta(alphas[i], betas[j]), all from one trajectory."""
    out = []
    bar = tqdm(total=len(alphas) * len(betas), desc="BMA grid", disable=not progress)
    for a in alphas:
        row = []
        for b in betas:
            row.append(scorer(traj.bma(a, b)))
            bar.update(1)
        out.append(row)
    bar.close()
    return out


def bma_over_training(traj: Trajectory, scorer: StateScorer, alpha: float, beta: float, every: int = 10) -> List[dict]:
    """Scores of the last-step model and of the running BMA at steps 0, every, 2 every, ..., T (every image of
    the scorer's set): {'step', 'last', 'average'}."""
    from clipood_kit.methods.averaging import beta_weights
    w = beta_weights(traj.total_steps, alpha, beta)
    rows = []
    for step in sorted(set(range(0, traj.total_steps + 1, every)) | {traj.total_steps}):
        if step not in traj.steps:
            continue
        upto = traj.row_weights([x if t <= step else 0.0 for t, x in enumerate(w)])
        last = traj.row_weights([1.0 if t == step else 0.0 for t in range(traj.total_steps + 1)])
        rows.append({"step": step, "last": scorer(traj.weighted(last)), "average": scorer(traj.weighted(upto))})
    return rows


def wise_curve(traj: Trajectory, scorer: StateScorer, mixes: Sequence[float]) -> List[dict]:
    return [scorer(traj.wise(a)) for a in mixes]


_PREPARED: Dict[str, Setup] = {}


def prepared(exp: ExperimentConfig) -> Setup:
    """`prepare(exp)`, kept for this process: the jobs of one sweep share the experiment, so a process that runs
    several of them (the serial runner, or one worker) prepares it once. The key holds the weights' and data's
    identity too, so a changed folder or weights file is prepared anew."""
    key = store.key_of({"experiment": exp.to_dict(), "inputs": inputs_identity(exp)})
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = prepare(exp)
    return _PREPARED[key]


def lambda_point(exp: ExperimentConfig, method: MethodConfig) -> dict:
    """One point of a lambda sweep (an independent job of `fan_out`): the method's primary and last-step scores."""
    r = run_method(prepared(exp).for_method(method), progress=False)
    return {"lambda": method.part("mms").margin_lambda, "primary": r["primary"],
            "models": {k: v for k, v in r["models"].items() if k in (r["primary"], "last")}}


def lambda_sweep(exp: ExperimentConfig, lambdas: Sequence[float], method: MethodConfig,
                 cache: Optional[Path] = None, progress: bool = False, runner: Optional[Runner] = None) -> Dict:
    """One training run per lambda of `method` (which must have an `mms` part) on `exp`; each point's scores
    (the method's result and its last step) are cached on disk, keyed by every setting (the experiment, the
    method with that lambda, the model and data identity), so reopening a notebook is instant. The points not
    in the cache are independent jobs, fanned out by `runner` (serial by default).
    Returns {'lambdas', 'points': [{'lambda', 'primary', 'models': {name: scores}}], 'zero_shot': scores}."""
    if method.part("mms") is None:
        raise ValueError(f"a lambda sweep needs a method with the mms loss; {method.name!r} has {method.describe()}")
    inputs = inputs_identity(exp)
    methods = [set_method_fields(method, {"mms.margin_lambda": float(lam)}) for lam in lambdas]
    payloads = [{"experiment": exp.to_dict() | {"method": m.to_dict()}, "inputs": inputs} for m in methods]
    found = [store.lookup("lambda-point", p, cache) for p in payloads]
    missing = [i for i, (ok, _) in enumerate(found) if not ok]
    computed = dict(zip(missing, fan_out(lambda_point, [(exp, methods[i]) for i in missing], runner or Runner(),
                                         desc="lambda sweep", progress=progress)))
    points = [store.cached("lambda-point", p, lambda i=i: computed[i], cache) if i in computed else found[i][1]
              for i, p in enumerate(payloads)]
    zero = store.cached("zero-shot", {"experiment": exp.to_dict(), "inputs": inputs},
                        lambda: zero_shot_scores(prepared(exp)), cache)
    return {"lambdas": [float(x) for x in lambdas], "points": points, "zero_shot": zero}


SWEEP_KINDS = ("lambda", "bma", "wise")


def run_sweep(kind: str, exp: ExperimentConfig, values: Sequence[float], betas: Sequence[float], out: Path,
              progress: bool = True, runner: Optional[Runner] = None, overwrite: bool = False) -> dict:
    """`clipood-kit sweep`: lambda (one run per value, cached; the runs fanned out by `runner`), bma (`values` are the alphas, `betas` the betas,
    one recorded run) or wise (`values` are the mixes, one recorded run). Writes results.json and report.html
    into `out`; every point holds every cell and OOD score."""
    from clipood_kit.viz import figures
    from clipood_kit.viz.report import report_html
    from clipood_kit.viz.widgets import cells_of
    if kind not in SWEEP_KINDS:
        raise ValueError(f"unknown sweep {kind!r}; choose one of {SWEEP_KINDS}")
    if not values:
        raise ValueError("a sweep needs at least one value")
    check_unique("values", values)
    check_unique("betas", betas or [])
    out = check_results_dir(out, overwrite, "sweep")
    label = "unseen domains / new"
    sections = []
    result: dict = {"kind": kind, "experiment": exp.to_dict()}
    if kind == "lambda":
        sweep = lambda_sweep(exp, values, exp.method, progress=progress, runner=runner)
        zero = cells_of(sweep["zero_shot"])
        result.update(sweep)
        curves = {f"{model}: {label}": [cells_of(p["models"][model])[label] for p in sweep["points"]]
                  for model in (sweep["points"][0]["primary"], "last")}
        sections.append(("Accuracy against lambda", "", figures.curve_figure(
            sweep["lambdas"], curves, f"{exp.method.name}: accuracy (%) against lambda", "lambda", "accuracy (%)",
            references={"zero-shot": zero[label]})))
    else:
        setup = prepare(exp)
        run = record_run(setup, progress=progress)
        scorer = StateScorer(setup)
        result.update(zero_shot=scorer(setup.zero_shot.state), last=run["result"]["models"]["last"])
        zero, last = cells_of(result["zero_shot"]), cells_of(result["last"])
        refs = {"zero-shot": zero[label], "last step": last[label]}
        if kind == "bma":
            betas = list(betas) or list(values)
            grid = bma_grid(run["trajectory"], scorer, values, betas, progress=progress)
            result.update(alphas=list(values), betas=betas, grid=grid)
            z = [[cells_of(s)[label] for s in row] for row in grid]
            sections.append(("BMA over (alpha, beta)", "", figures.grid_heatmap(
                z, values, betas, f"BMA: {label} (%)", "%", marks={"paper DG": (0.5, 0.5),
                                                                  "paper open class": (0.1, 0.1)}, references=refs)))
        else:
            points = wise_curve(run["trajectory"], scorer, values)
            result.update(mixes=list(values), points=points)
            curves = {c: [cells_of(p)[c] for p in points] for c in (label, "train domains / base")}
            sections.append(("WiSE-FT mix", "", figures.curve_figure(
                values, curves, f"WiSE-FT of {exp.method.name}: accuracy (%) against the mix", "mix a "
                "(0 = zero-shot, 1 = fine-tuned)", "accuracy (%)", references=refs)))
    write_results(out, result, report_html(f"clipood-kit sweep: {kind}", sections))
    return result
