"""The cost of a training step per method against a CE step, on the tiny CLIP (CPU): CE (image tower),
CoOp (prompt context through the frozen text tower), CoCoOp (the same, once per image: batch x classes prompts),
CLIP-Adapter (an adapter on frozen features), Tip-Adapter-F (the cache's keys), FLYP (both towers, the text tower
over every class's prompt ensemble each step), OGEN in its prompt setting (CoOp plus the feature generator and the
mean teacher's class features) and its image-encoder variant OGEN-FT. Runs are interleaved so machine noise hits each alike; prints the
median seconds per step and the ratio to CE. Then the cost of scoring one trained state on the evaluation images
(and the OOD sets), against CE's: CoCoOp encodes images x classes prompts there too.

    python benchmarks/method_steps.py [--steps 40] [--repeats 3]
"""
import argparse
import json
import statistics
import time

import torch

from clipood_kit import build_experiment, prepare
from clipood_kit.engine.runs import build_task
from clipood_kit.engine.training import fine_tune
from clipood_kit.methods import Method

METHODS = ("ce", "coop", "cocoop", "clip-adapter", "tip-adapter-f", "flyp", "ogen", "ogen-ft")
SCORED = ("ce", "coop", "cocoop", "tip-adapter")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    setup = prepare(build_experiment(steps=args.steps, batch_size=32, cache_dir="off"))

    def step_seconds(name):
        s = setup.for_method(build_experiment(method=name).method)
        method = Method(s.cfg.method)
        method.prepare(s.part_inputs())
        task = build_task(s, method)
        start = time.perf_counter()
        fine_tune(task, progress=False)
        return (time.perf_counter() - start) / args.steps

    for name in METHODS:                                    # warm-up
        step_seconds(name)
    runs = {name: [] for name in METHODS}
    for _ in range(args.repeats):
        for name in METHODS:
            runs[name].append(step_seconds(name))
    median = {n: statistics.median(v) for n, v in runs.items()}

    from clipood_kit.engine.runs import run_method
    from clipood_kit.engine.scoring import evaluate_state
    states = {n: run_method(setup.for_method(build_experiment(method=n, steps=2).method), progress=False)["states"]["last"]
              for n in SCORED}
    scoring = {n: [] for n in SCORED}
    for _ in range(args.repeats):
        for n in SCORED:
            start = time.perf_counter()
            evaluate_state(setup, states[n])
            scoring[n].append(time.perf_counter() - start)
    score_median = {n: statistics.median(v) for n, v in scoring.items()}
    images = len(setup.split.eval_idx) + sum(len(s) for s in setup.ood_sets.values())
    print(json.dumps({"benchmark": "method_steps", "threads": torch.get_num_threads(), "batch_size": 32,
                      "ms_per_step": {n: round(1000 * m, 2) for n, m in median.items()},
                      "ratio_to_ce": {n: round(m / median["ce"], 3) for n, m in median.items()},
                      "scoring_images": images, "classes": len(setup.dataset.classes),
                      "scoring_seconds": {n: round(m, 2) for n, m in score_median.items()},
                      "scoring_ratio_to_ce": {n: round(m / score_median["ce"], 2) for n, m in score_median.items()}}))


if __name__ == "__main__":
    main()
