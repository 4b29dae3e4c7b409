"""Learning-rate schedules shared by pretraining and fine-tuning."""
from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up over `warmup_steps`, then `base_lr * (1 + cos(pi * p)) / 2` with p the progress in [0, 1]
    (the per-step cosine schedule of CLIPood's official code, which uses no warm-up)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))
