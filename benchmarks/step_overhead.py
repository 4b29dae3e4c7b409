"""Cost of CLIPood over plain fine-tuning, per training step, on the tiny model (CPU).

Measures in one run, interleaved in blocks so that machine noise hits both alike:
- CE step: forward + cross-entropy + backward + AdamW step;
- MMS+BMA step: the same with the MMS loss and a BMA update;
- the BMA update alone.
Prints a JSON line with medians and the ratio (target: MMS+BMA / CE <= 1.05).

    python benchmarks/step_overhead.py [--batch-size 32] [--blocks 15] [--steps-per-block 10]
"""
import argparse
import json
import statistics
import time

import torch

from clipood_kit import BetaMovingAverage, class_margins, mms_loss
from clipood_kit.models import load_clip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--steps-per-block", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tokenizer, preprocess = load_clip()
    encoder = model.visual
    encoder.train()
    text = torch.nn.functional.normalize(torch.randn(12, model.visual.output_dim), dim=-1)
    images = preprocess(torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8))
    labels = torch.randint(12, (args.batch_size,))
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-6, weight_decay=0.1)
    total = args.blocks * args.steps_per_block * 2 + 10
    bma = BetaMovingAverage(encoder, total, 0.5, 0.5)

    margins = class_margins(text, 0.3)      # what the trainer's method computes once

    def step(margin, average):
        loss = mms_loss(encoder(images), text, labels, margin, 14.0, margins if margin else None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if average:
            bma.update(encoder)

    for _ in range(5):
        step(0.0, False)
    ce, clipood, update = [], [], []
    for _ in range(args.blocks):
        for kind, bucket, margin, average in (("ce", ce, 0.0, False), ("clipood", clipood, 0.3, True)):
            t = time.perf_counter()
            for _ in range(args.steps_per_block):
                step(margin, average)
            bucket.append((time.perf_counter() - t) / args.steps_per_block)
        bma_only = BetaMovingAverage(encoder, args.steps_per_block, 0.5, 0.5)
        t = time.perf_counter()
        for _ in range(args.steps_per_block):
            bma_only.update(encoder)
        update.append((time.perf_counter() - t) / args.steps_per_block)
    ce_ms, clipood_ms, upd_ms = (1e3 * statistics.median(x) for x in (ce, clipood, update))
    print(json.dumps({"benchmark": "step_overhead", "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in encoder.parameters()),
                      "ce_step_ms": round(ce_ms, 3), "mms_bma_step_ms": round(clipood_ms, 3),
                      "ratio": round(clipood_ms / ce_ms, 4), "bma_update_ms": round(upd_ms, 3),
                      "bma_update_share_of_ce_step": round(upd_ms / ce_ms, 4)}))


if __name__ == "__main__":
    main()
