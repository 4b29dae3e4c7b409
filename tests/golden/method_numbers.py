"""The numbers every registered method gives on a small float64 experiment: each evaluated model's scores, a
digest of its weights (per tensor: sum and sum of squares) and the loss history.

`methods_before_frame.json` was written by this script with the code before the frame rebuild (issue 19: one
experiment spec, one model state for both towers; commit ee8d5a8, where a state was the image
tower's own state_dict); `tests/test_frame_equality.py` recomputes the numbers with today's code and compares
them to 1e-6. float64, so the comparison is not at the mercy of float32 summation order.

    python tests/golden/method_numbers.py OUT.json
"""
from dataclasses import replace
import json
import sys

import torch

SETTINGS = dict(per_cell=6, steps=8, batch_size=8, lr=1e-4, seed=0)
# the golden file's names that a method has since changed: "ogen" was the image-encoder variant, named "ogen-ft"
# since issue 18 gave "ogen" to OGEN in its own (prompt-learning) setting
RENAMED = {"ogen": "ogen-ft"}


def digest(state):
    """Per floating-point tensor (image-tower entries named as the tower names them): [sum, sum of squares]."""
    return {k[len("visual."):] if k.startswith("visual.") else k: [v.double().sum().item(), v.double().pow(2).sum().item()]
            for k, v in sorted(state.items()) if v.is_floating_point()}


def method_numbers(names=None):
    from clipood_kit.engine.builder import build_experiment
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.engine.runs import run_method
    from clipood_kit.methods import METHODS, compose
    s = SETTINGS
    exp = build_experiment("tiny-world", per_cell=s["per_cell"], cache_dir="off", steps=s["steps"],
                           batch_size=s["batch_size"], lr=s["lr"], settings=[f"train.seed={s['seed']}", "far_ood_sets="])
    # the golden numbers predate the far-OOD sets (issue 18): the experiment renders none, and the results' new
    # key naming the shifts' kinds is left out below
    setup = prepare(exp)
    setup.zero_shot.loaded.model.double()
    setup.zero_shot = replace(setup.zero_shot, state={k: v.double() for k, v in setup.zero_shot.state.items()})
    out = {}
    for name in names or METHODS:
        r = run_method(setup.for_method(compose(RENAMED.get(name, name))), progress=False)
        models = {m: {k: v for k, v in sc.items() if k != "ood_shifts"} for m, sc in r["models"].items()}
        out[name] = {"models": models, "weights": {m: digest(st) for m, st in r["states"].items()},
                     "losses": [row["loss"] for row in r["history"]]}
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    with open(sys.argv[1], "w") as f:
        json.dump(method_numbers(), f, indent=1, sort_keys=True)
