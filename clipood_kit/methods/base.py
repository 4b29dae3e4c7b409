"""The interface every fine-tuning method implements (one small class per method, DomainBed style).

The trainer calls, in order: `setup(encoder, text_features, logit_scale, total_steps, **inputs)` once, where
`inputs` holds the extra inputs the method names in `Method.inputs` (built by `protocols.method_inputs`); then
every step `loss(features, labels, images)` and, after the optimiser step, `after_step(encoder)`; at the end
`final_states(zero_shot_state, last_state)`, which names the models to evaluate. `state_dict` /
`load_state_dict` carry whatever the method keeps across steps (an average, a generator) through checkpoints.
Modules returned by `trainable_modules()` (OGEN's feature generator) are optimised with the encoder, at
`lr_scale` times its learning rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .averaging import BetaMovingAverage, ExponentialMovingAverage, with_average
from .losses import _check_lambda, class_margins, mms_loss

State = Dict[str, torch.Tensor]


@dataclass
class MethodConfig:
    """Hyperparameters of all methods, defaults from the papers (docs/methods.md)."""

    name: str = "clipood"
    margin_lambda: float = 0.3        # MMS lambda (CLIPood: 0.3 domain shift / base-to-new, 0.1 in the wild)
    bma_alpha: float = 0.5            # BMA Beta(alpha, beta) (official code: 0.5 DomainBed, 0.1 base-to-new)
    bma_beta: float = 0.5
    ema_decay: float = 0.99
    wise_mixes: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    wise_mix: float = 0.5             # the WiSE-FT model reported as the method's result
    carft_beta: float = 1.0           # CAR-FT weight of the context KL
    ogen_k: int = 3                   # OGEN: nearest known classes per generated feature (official code: 3)
    ogen_heads: int = 4               # OGEN: attention heads of the feature generator (official code: 4)
    ogen_warmup: float = 0.2          # OGEN: share of the steps with the leave-one-out regression alone
    ogen_window: float = 0.25         # OGEN self-distillation: the teacher averages the latest 25% of the steps
    ogen_snapshots: int = 40          # OGEN self-distillation: snapshot every ceil(steps / 40) steps
    ogen_distill: float = 1.0         # OGEN self-distillation: weight of KL(teacher || student)
    ogen_synthetic: float = 1.0       # OGEN: multiplier of the synthetic-feature CE terms (0: ablation without them)
    ogen_lr_scale: float = 10.0       # OGEN: generator learning rate / encoder learning rate

    def validate(self) -> None:
        """Refuse values no method can train with (before any work is done)."""
        _check_lambda(self.margin_lambda)
        for name in ("bma_alpha", "bma_beta"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite and > 0 (the official code uses 0.1 or 0.5), got {value}")


class Method:
    """Plain fine-tuning: cross-entropy on logit_scale * cos(f, t_c); the last model is the result."""

    name = "ce"
    inputs: Tuple[str, ...] = ()      # extra setup() inputs, e.g. "context_features" (see protocols.method_inputs)
    lr_scale = 1.0                    # learning-rate multiplier of trainable_modules()
    margin_lambda_used = False
    averager_kind: Optional[str] = None

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.margin_lambda = cfg.margin_lambda if self.margin_lambda_used else 0.0
        self.averager = None

    # -- training -------------------------------------------------------------------------------------
    def setup(self, encoder: torch.nn.Module, text_features: torch.Tensor, logit_scale: float, total_steps: int,
              **inputs: torch.Tensor):
        self.text_features, self.logit_scale = text_features, logit_scale
        self.margins = class_margins(text_features, self.margin_lambda) if self.margin_lambda else None
        if self.averager_kind == "bma":
            self.averager = BetaMovingAverage(encoder, total_steps, self.cfg.bma_alpha, self.cfg.bma_beta)
        elif self.averager_kind == "ema":
            self.averager = ExponentialMovingAverage(encoder, self.cfg.ema_decay)

    def trainable_modules(self) -> List[torch.nn.Module]:
        """Modules of the method itself that the optimiser trains with the encoder."""
        return []

    def loss(self, features: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return mms_loss(features, self.text_features, labels, self.margin_lambda, self.logit_scale, self.margins)

    def after_step(self, encoder: torch.nn.Module) -> Dict[str, float]:
        if self.averager is None:
            return {}
        weight = self.averager.update(encoder)
        return {"average_weight": weight, "zero_shot_share": self.averager.zero_shot_share}

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {} if self.averager is None else self.averager.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.averager is not None:
            self.averager.load_state_dict(state)

    # -- results --------------------------------------------------------------------------------------
    @property
    def primary(self) -> str:
        """Name of the evaluated model that is this method's result."""
        return self.averager_kind or "last"

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        states = {"last": last}
        if self.averager is not None:
            states[self.averager_kind] = with_average(last, self.averager.average)
        return states
