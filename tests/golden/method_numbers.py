"""The numbers every registered method gives on a small float64 experiment: each evaluated model's scores, a
digest of its weights (per tensor: sum and sum of squares) and the loss history.

`python tests/golden/method_numbers.py OUT.json` wrote `methods_before_frame.json` with the code before the
frame rebuild (issue 19: one experiment spec, one model state for both towers); `tests/test_frame_equality.py`
recomputes the numbers with today's code and compares them to 1e-6. float64, so the comparison is not at the
mercy of float32 summation order.
"""
import json
import sys

import torch

SETTINGS = dict(per_cell=6, steps=8, batch_size=8, lr=1e-4, seed=0)


def digest(state):
    return {k: [v.double().sum().item(), v.double().pow(2).sum().item()] for k, v in sorted(state.items())
            if v.is_floating_point()}


def method_numbers(names=None):
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    from clipood_kit.methods import METHODS, compose
    from clipood_kit.engine.runs import run_method
    from clipood_kit.engine.training import TrainConfig
    s = SETTINGS
    exp = ExperimentConfig(per_cell=s["per_cell"], cache_dir="off",
                           train=TrainConfig(steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=s["seed"]))
    setup = prepare(exp)
    setup.loaded.model.double()
    setup.zero_shot_state = {k: v.double() for k, v in setup.zero_shot_state.items()}
    out = {}
    for name in names or METHODS:
        r = run_method(setup, compose(name), exp.train, progress=False)
        out[name] = {"models": r["models"], "weights": {m: digest(st) for m, st in r["states"].items()},
                     "losses": [row["loss"] for row in r["history"]]}
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    with open(sys.argv[1], "w") as f:
        json.dump(method_numbers(), f, indent=1, sort_keys=True)
