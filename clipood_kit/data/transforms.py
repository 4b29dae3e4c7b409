"""Image transforms built from a model's preprocessing config; they take uint8 C x H x W tensors (or PIL).

Eval: resize the shorter side + center crop + normalise (CLIP's preprocessing).
Train: RandomResizedCrop(scale 0.7-1.0) + horizontal flip + normalise (CLIPood's augmentation; docs/methods.md).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def _size(preprocess_cfg: dict) -> int:
    size = preprocess_cfg["size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def make_transform(preprocess_cfg: dict, train: bool = False, crop_scale: Sequence[float] = (0.7, 1.0)) -> Callable:
    """The eval (or train) transform (a torchvision `v2.Compose`) for a model whose `model.visual.preprocess_cfg` is
    given. torchvision is imported here, on use: its import costs 1.3 s (it imports torch._dynamo), which a process
    that only reads stored results does not need."""
    from torchvision.transforms import InterpolationMode, v2
    size = _size(preprocess_cfg)
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
             "nearest": InterpolationMode.NEAREST}
    interpolation = modes.get(preprocess_cfg.get("interpolation", "bicubic"), InterpolationMode.BICUBIC)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(preprocess_cfg["mean"]), list(preprocess_cfg["std"]))]
    if train:
        head = [v2.ToImage(), v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=interpolation,
                                                   antialias=True),
                v2.RandomHorizontalFlip()]
    else:
        head = [v2.ToImage(), v2.Resize(size, interpolation=interpolation, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(head + tail)
