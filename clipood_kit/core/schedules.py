"""Learning-rate schedules shared by pretraining and fine-tuning: CLIPood's per-step cosine, and Dassl's per-epoch
cosine with a constant warm-up (the CoOp family's official trainer)."""
from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up over `warmup_steps`, then `base_lr * (1 + cos(pi * p)) / 2` with p the progress in [0, 1]
    (the per-step cosine schedule of CLIPood's official code, which uses no warm-up)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def dassl_steps_per_epoch(images: int, batch_size: int) -> int:
    """Batches in one epoch of Dassl's training loader (`dassl/data/data_manager.py` `build_data_loader`: the
    train loader drops the last incomplete batch when the set holds at least one batch): images // batch_size,
    and 1 for a set smaller than a batch."""
    if images < 1 or batch_size < 1:
        raise ValueError(f"an epoch needs images >= 1 and batch_size >= 1, got {images} and {batch_size}")
    return max(1, images // batch_size)


def dassl_epoch_lr(epoch: int, epochs: int, base_lr: float, warmup_lr: float, warmup_epochs: int = 1) -> float:
    """The learning rate of epoch `epoch` (from 0) under Dassl's schedule as the CoOp family configures it
    (`dassl/optim/lr_scheduler.py`: `CosineAnnealingLR` with T_max = MAX_EPOCH, inside a
    `ConstantWarmupScheduler` of WARMUP_EPOCH epochs at WARMUP_CONS_LR; e.g. KaiyangZhou/CoOp
    `configs/trainers/CoOp/vit_b16_ctxv1.yaml` lines 17-22): `warmup_lr` for the first `warmup_epochs`, then
    `base_lr * (1 + cos(pi * (epoch - warmup_epochs) / epochs)) / 2` (the cosine starts when the warm-up ends and
    keeps T_max = epochs, so it never reaches 0)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))
