"""The averager parts of a method (methods/base.py): BMA (CLIPood), EMA, and WiSE-FT's weight interpolation.

The arithmetic lives in `averaging.py`; these classes connect it to the trainer's hooks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Tuple

from clipood_kit.methods.averaging import BetaMovingAverage, ExponentialMovingAverage, interpolate, with_average
from clipood_kit.methods.base import Averager, Metrics, PartConfig, RunContext, State


@dataclass
class BMAConfig(PartConfig):
    """Beta moving average (CLIPood Sec. 3.3, Eq. 7-8); Beta(0.5, 0.5) is the official DomainBed setting,
    Beta(0.1, 0.1) the official OfficeHome/base-to-new one (docs/methods.md)."""

    kind: ClassVar[str] = "bma"
    role: ClassVar[str] = "averager"
    summary: ClassVar[str] = "Beta(alpha, beta)-weighted mean of the weights over all steps, zero-shot model included"
    alpha: float = 0.5
    beta: float = 0.5

    def validate(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"bma.{name} must be finite and > 0 (the official code uses 0.1 or 0.5), got {value}")

    def build(self) -> "BMA":
        return BMA(self)


class _RunningAverage(Averager):
    def after_step(self, model) -> Metrics:
        weight = self.average.update(model)
        return {"average_weight": weight, "zero_shot_share": self.average.zero_shot_share}

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)

    def average_of(self, last: State) -> State:
        return with_average(last, self.average.average)

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        return {self.primary: self.average_of(last)}


class BMA(_RunningAverage):
    primary = "bma"

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.average = BetaMovingAverage(run.model, run.total_steps, self.cfg.alpha, self.cfg.beta)


@dataclass
class EMAConfig(PartConfig):
    """Exponential moving average of the weights, a common temporal-ensemble baseline."""

    kind: ClassVar[str] = "ema"
    role: ClassVar[str] = "averager"
    summary: ClassVar[str] = "exponential moving average of the weights, avg = decay * avg + (1 - decay) * theta"
    decay: float = 0.99

    def validate(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}")

    def build(self) -> "EMA":
        return EMA(self)


class EMA(_RunningAverage):
    primary = "ema"

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.average = ExponentialMovingAverage(run.model, self.cfg.decay)


@dataclass
class WiSEConfig(PartConfig):
    """WiSE-FT (Wortsman et al., CVPR 2022, Eq. 1): after training, theta(a) = (1 - a) theta_0 + a theta_ft for
    every a in `mixes`; the model at `mix` is the method's result (0.5, the paper's default)."""

    kind: ClassVar[str] = "wise-ft"
    role: ClassVar[str] = "averager"
    summary: ClassVar[str] = "interpolate zero-shot and fine-tuned weights after training, (1 - a) theta_0 + a theta"
    mixes: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    mix: float = 0.5

    def validate(self) -> None:
        for a in (*self.mixes, self.mix):
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"wise-ft mixes must be in [0, 1], got {a}")

    def build(self) -> "WiSEFT":
        return WiSEFT(self)


class WiSEFT(Averager):
    @property
    def primary(self) -> str:
        return f"wise-ft@{self.cfg.mix:g}"

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.zero_shot = run.model.trained_state()

    def average_of(self, last: State) -> State:
        return interpolate(self.zero_shot, last, self.cfg.mix)

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        mixes = sorted(set(self.cfg.mixes) | {self.cfg.mix})
        return {f"wise-ft@{a:g}": interpolate(zero_shot, last, a) for a in mixes}


@dataclass
class BMAGridConfig(PartConfig):
    """Exact Beta moving averages for every (alpha, beta) of a grid, kept during training (one fused update
    each per step), for models too large to keep a trajectory (`posthoc.Trajectory`). The result is the first
    pair's average; every pair's is evaluated ("bma@a,b")."""

    kind: ClassVar[str] = "bma-grid"
    role: ClassVar[str] = "averager"
    summary: ClassVar[str] = "Beta moving averages for a grid of (alpha, beta), one fused update each per step"
    alphas: Tuple[float, ...] = (0.5, 0.1, 1.0)
    betas: Tuple[float, ...] = (0.5, 0.1, 1.0)

    def validate(self) -> None:
        if not self.alphas or not self.betas:
            raise ValueError("bma-grid needs at least one alpha and one beta")
        for a in (*self.alphas, *self.betas):
            BMAConfig(a, a).validate()

    def pairs(self):
        return [(a, b) for a in self.alphas for b in self.betas]

    def build(self) -> "BMAGrid":
        return BMAGrid(self)


class BMAGrid(Averager):
    @property
    def primary(self) -> str:
        return self.name(*self.cfg.pairs()[0])

    @staticmethod
    def name(alpha: float, beta: float) -> str:
        return f"bma@{alpha:g},{beta:g}"

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.averages = {self.name(a, b): BetaMovingAverage(run.model, run.total_steps, a, b)
                         for a, b in self.cfg.pairs()}

    def after_step(self, model) -> Metrics:
        for avg in self.averages.values():
            avg.update(model)
        return {}

    def state_dict(self) -> dict:
        return {name: avg.state_dict() for name, avg in self.averages.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, avg in self.averages.items():
            avg.load_state_dict(state[name])

    def average_of(self, last: State) -> State:
        return with_average(last, self.averages[self.primary].average)

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        return {name: with_average(last, avg.average) for name, avg in self.averages.items()}
