"""What the trainer costs over a hand-written PyTorch loop, on the tiny model (CPU).

Both train plain cross-entropy (batch 32, 60 steps) from the zero-shot encoder on the same training images with
the same training transform, AdamW and cosine schedule; the hand loop draws batches with one generator and
transforms images under the global RNG, the trainer (`training.fine_tune`) adds what exact resume and
k-process equality need: (seed, step)-addressed batches, a seed per image, the DataLoader, Accelerate,
the finite-loss check, the history, the progress bar and the model state of both towers (the model returns
its class features; here the frozen ones). Runs are interleaved (trainer, hand, trainer, ...)
so that machine noise hits both alike; prints a JSON line with the medians and their ratio (goal <= 1.05).

    python benchmarks/trainer_overhead.py [--steps 60] [--repeats 5]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.methods import Method, compose
from clipood_kit.core.schedules import cosine_lr
from clipood_kit.engine.runs import build_task
from clipood_kit.engine.training import TrainConfig, fine_tune


def hand_loop(task, steps: int, batch_size: int, lr: float) -> float:
    encoder, data, transform = task.model.visual, task.train_set, task.transform
    text, scale, label_map = task.text_features, task.logit_scale, task.label_map
    encoder.train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        idx = torch.randint(len(data), (batch_size,), generator=gen).tolist()
        items = [data[i] for i in idx]
        images = torch.stack([transform(image) for image, _, _ in items])
        labels = label_map[torch.tensor([label for _, label, _ in items])]
        logits = scale * F.normalize(encoder(images), dim=-1) @ text.T
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def trainer(task) -> float:
    start = time.perf_counter()
    fine_tune(task, progress=False)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    train = TrainConfig(steps=args.steps, batch_size=32, lr=1e-4)
    setup = prepare(ExperimentConfig(per_cell=30, train=train))

    def task():
        return build_task(setup, Method(compose("ce")), train)

    trainer(task())                                       # warm-up of both paths
    hand_loop(task(), 5, 32, 1e-4)
    ours, hand = [], []
    for _ in range(args.repeats):
        ours.append(trainer(task()))
        t = task()
        hand.append(hand_loop(t, args.steps, 32, 1e-4))
    print(json.dumps({"benchmark": "trainer_overhead", "steps": args.steps, "batch_size": 32,
                      "threads": torch.get_num_threads(), "trainer_s": round(statistics.median(ours), 3),
                      "hand_loop_s": round(statistics.median(hand), 3),
                      "ratio": round(statistics.median(ours) / statistics.median(hand), 4),
                      "trainer_runs": [round(x, 3) for x in ours], "hand_runs": [round(x, 3) for x in hand]}))


if __name__ == "__main__":
    main()
