"""How fast a weight state is scored, and a post-hoc BMA model built, on the tiny model (CPU): what the
notebooks' alpha/beta, lambda and WiSE-FT sliders pay per move.

On the demo's experiment (30 images per cell; the evaluation set: held-out images of the training styles and
every image of the unseen styles), times: building the BMA state from a 120-step trajectory, the forward
pass, the cells + OOD arithmetic, and the whole `StateScorer` call. Prints a JSON line (goal: <= 1 s a state).

    python benchmarks/state_scorer.py [--repeats 7]
"""
import argparse
import json
import statistics
import time

import torch

from clipood_kit.methods import compose
from clipood_kit.engine.posthoc import Trajectory
from clipood_kit.engine.presets import demo_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import StateScorer, score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    exp = demo_experiment()
    setup = prepare(exp)
    names = [f"visual.{n}" for n, _ in setup.zero_shot.loaded.model.visual.named_parameters()]
    traj = Trajectory(exp.train.steps).start(setup.zero_shot.state, names)
    run_method(setup.for_method(compose("clipood"), exp.train), progress=False, on_step=traj.recorder())
    t = time.perf_counter()
    scorer = StateScorer(setup)
    prepare_s = time.perf_counter() - t
    times = {"bma_state": [], "forward": [], "cells_and_ood": [], "total": []}
    for i in range(args.repeats):
        a = 0.1 + 0.1 * i
        t0 = time.perf_counter()
        state = traj.bma(a, a)
        t1 = time.perf_counter()
        feats = scorer.features(state)
        t2 = time.perf_counter()
        score(setup, feats, scorer.labels, scorer.domains)
        t3 = time.perf_counter()
        scorer(traj.bma(a, a))
        t4 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, (t1 - t0) + (t4 - t3))):
            times[k].append(v)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    # snapshots every k steps (the large-model path) against the exact average, for the paper's two settings
    exact_traj = traj
    snapshot_error = {}
    for every in (5, 20):
        sparse = Trajectory(exp.train.steps, every).start(setup.zero_shot.state, names)
        sparse.steps, sparse.rows = [], []
        for t in list(range(0, exp.train.steps + 1, every)) + ([exp.train.steps] if exp.train.steps % every else []):
            k = exact_traj.steps.index(t)
            sparse.steps.append(t)
            sparse.rows.append(exact_traj.matrix[k])
        sparse.template = exact_traj.template
        for ab in (0.5, 0.1):
            exact, approx = exact_traj.bma(ab, ab), sparse.bma(ab, ab)
            err = max((exact[n] - approx[n]).abs().max().item() for n in names)
            scale = max(exact[n].abs().max().item() for n in names)
            acc = scorer(approx)["accuracy"]["unseen"]["new"] - scorer(exact)["accuracy"]["unseen"]["new"]
            snapshot_error[f"every{every}_beta{ab:g}"] = {"max_abs_param_error": round(err, 6),
                                                          "relative": round(err / scale, 6),
                                                          "unseen_new_accuracy_change": round(acc, 2)}
    print(json.dumps({"benchmark": "state_scorer", "threads": torch.get_num_threads(), "images": len(scorer.labels),
                      "trajectory_states": len(traj.steps), "trajectory_mb": round(traj.nbytes / 1e6, 1),
                      "scorer_setup_s": round(prepare_s, 3), **{f"{k}_s": v for k, v in med.items()},
                      "snapshots_vs_exact": snapshot_error}))


if __name__ == "__main__":
    main()
