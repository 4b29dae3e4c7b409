"""CLIP-Adapter (Gao et al., IJCV 2024, arXiv 2110.04544; official code github.com/gaopengcuhk/CLIP-Adapter,
`clip_adapter.py`).

Both encoders stay frozen; a bottleneck MLP on the image features learns, mixed with the frozen feature by a
residual ratio (official `clip_adapter.py` lines 55-67 and 100-113):

    A(f)  = ReLU(W2 ReLU(W1 f)),   W1: D -> D / reduction, W2: D / reduction -> D, no biases (reduction 4)
    f'    = ratio * A(f) + (1 - ratio) * f                  (ratio 0.2, hard-coded in the official forward)
    logits = logit_scale * cos(f', t_c),  cross-entropy on the training classes.

Here the adapter is a part's module in the model (`models.adapted.PartModule.adapt_image`), so it is the run's
whole trained state (`parts.clip-adapter.*`); its initial weights are PyTorch's default Linear init drawn from
the run's seed (the official code draws from the global RNG). Text features: the experiment's template ensemble
(the official code uses one hand-written template per dataset).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
from torch import nn

from clipood_kit.methods.base import PartConfig, MethodContext
from clipood_kit.methods.losses import CrossEntropy
from clipood_kit.models.adapted import PartModule


class ImageAdapter(PartModule):
    """f' = ratio * ReLU(W2 ReLU(W1 f)) + (1 - ratio) * f (the module docstring)."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())
        self.register_buffer("ratio", torch.tensor(float(ratio)))

    def adapt_image(self, features: torch.Tensor) -> torch.Tensor:
        ratio = self.ratio.to(features.dtype)
        return ratio * self.fc(features) + (1 - ratio) * features

    @classmethod
    def from_state(cls, state) -> "ImageAdapter":
        hidden, dim = state["fc.0.weight"].shape
        return cls(dim, dim // hidden, float(state["ratio"]))


@dataclass
class CLIPAdapterConfig(PartConfig):
    kind: ClassVar[str] = "clip-adapter"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "CLIP-Adapter: a residual bottleneck MLP on frozen image features, cross-entropy"
    trains: ClassVar[Tuple[str, ...]] = ()                 # both towers frozen: only the adapter learns
    module: ClassVar[Optional[type]] = ImageAdapter
    reduction: int = 4               # official: Adapter(1024, 4)
    ratio: float = 0.2               # official: ratio = 0.2 in CustomCLIP.forward

    def validate(self) -> None:
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"clip-adapter.reduction must be an integer >= 1, got {self.reduction!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"clip-adapter.ratio must be in [0, 1], got {self.ratio}")

    def build(self) -> "CLIPAdapter":
        return CLIPAdapter(self)


class CLIPAdapter(CrossEntropy):
    """Cross-entropy on the model's class features (`losses.CrossEntropy`), through this part's module."""

    def check(self, context: MethodContext) -> None:
        dim = context.text_features.shape[1]
        if dim % self.cfg.reduction:
            raise ValueError(f"clip-adapter.reduction ({self.cfg.reduction}) must divide the feature size ({dim})")

    def model_module(self, context: MethodContext) -> ImageAdapter:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.part_seed(self.cfg.kind))
            return ImageAdapter(context.text_features.shape[1], self.cfg.reduction, self.cfg.ratio)
