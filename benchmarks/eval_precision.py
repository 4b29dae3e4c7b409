"""Evaluation under bf16 autocast against fp32, on the same trained states (tiny CLIP, CPU).

One bf16 CLIPood run of the tiny-world preset; its models ("last", "bma") scored with `eval_precision` "no" and
"bf16". Prints the time of each and the largest differences: accuracy per cell (points) and OOD AUROC.

    python benchmarks/eval_precision.py
"""
import json
import time

import torch

from clipood_kit import build_experiment, prepare, run_method
from clipood_kit.engine.scoring import evaluate_state


def main():
    torch.set_num_threads(2)
    setup = prepare(build_experiment(precision="bf16", cache_dir="off"))
    result = run_method(setup, progress=False)
    scores, seconds = {}, {}
    for precision in ("no", "bf16"):
        spec = build_experiment(precision="bf16", cache_dir="off", settings=[f"eval_precision={precision}"])
        s = setup.for_method()
        s.cfg = spec
        start = time.perf_counter()
        scores[precision] = {m: evaluate_state(s, st) for m, st in result["states"].items()}
        seconds[precision] = time.perf_counter() - start
    accuracy, auroc = [], []
    for m in result["states"]:
        a, b = scores["no"][m], scores["bf16"][m]
        accuracy += [(abs(v - b["accuracy"][g][c]), m, g, c) for g, cells in a["accuracy"].items() for c, v in cells.items()]
        auroc += [(abs(x["AUROC"] - b["ood"][sh][n]["AUROC"]), m, sh, n) for sh, sc in a["ood"].items()
                  for n, x in sc.items()]
    print(json.dumps({"benchmark": "eval_precision", "eval_images": len(setup.split.eval_idx),
                      "fp32_s": round(seconds["no"], 3), "bf16_s": round(seconds["bf16"], 3),
                      "ratio": round(seconds["bf16"] / seconds["no"], 3),
                      "accuracy_max_diff_points": round(max(accuracy)[0], 3), "worst_cell": max(accuracy)[1:],
                      "auroc_max_diff": round(max(auroc)[0], 3), "worst_auroc": max(auroc)[1:]}))


if __name__ == "__main__":
    main()
