"""Methods as compositions of parts: one loss, optional regularisers, an optional averager.

A part is a small class with a typed config holding the paper's defaults (`PartConfig` subclasses, each with a
`kind`, the name `--set KIND.FIELD=VALUE` and results.json use). A method is a `MethodConfig`: the registry
(`methods/__init__.py`) names the paper methods as presets of parts, and any other combination is a config,
not a subclass. The trainer sees one `Method`, which calls its parts in this order:

- `prepare(setup)` once, before training: a part builds what it needs from the experiment (context features,
  unknown class names, class feature statistics) in its own module;
- `setup(run)` once, at the start of training (`RunContext`: encoder, frozen class text features, logit scale,
  total steps, the run's seed, device);
- every step `loss(batch)` -> (loss, metrics): the loss part's term times the product of the regularisers'
  `base_weight(step)` (OGEN switches the classification loss off during its warm-up), plus every regulariser's
  `penalty(batch)`; then, after the optimiser step, `after_step(encoder)` -> metrics (averagers update here);
- `final_states(zero_shot, last)` at the end: the models to evaluate, "last" plus what the parts add
  ("bma", "ema", "wise-ft@0.5", "teacher"); the averager names the method's result (`primary`).

`state_dict` / `load_state_dict` carry whatever parts keep across steps (an average, a generator) through
checkpoints. Every random draw of a part comes from a generator seeded by `RunContext.part_seed(kind)`, never
from the global RNG.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch

State = Dict[str, torch.Tensor]
Metrics = Dict[str, Any]          # floats or 0-dim tensors (the trainer turns them into floats)


@dataclass
class PartConfig:
    """Base of every part's config: `kind` names the part, `role` is "loss", "regulariser" or "averager"."""

    kind: ClassVar[str] = ""
    role: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def build(self) -> "Part":
        raise NotImplementedError

    def validate(self) -> None:
        """Refuse values the part cannot train with (before any work is done)."""

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass
class RunContext:
    encoder: torch.nn.Module
    text_features: torch.Tensor        # training classes x D, normalised, frozen
    logit_scale: float
    total_steps: int
    seed: int
    device: torch.device

    def part_seed(self, kind: str) -> int:
        """The run's seed for one part: stable across processes and Python versions (crc32, not hash())."""
        return (self.seed * 1_000_003 + zlib.crc32(kind.encode())) % (2**31 - 1)


@dataclass
class Batch:
    step: int                          # optimiser steps taken before this batch (0-based)
    features: torch.Tensor             # raw image features of the trained encoder, N x D
    labels: torch.Tensor               # rows of the training classes' text features
    images: torch.Tensor


class Part:
    """Hooks every part may implement; the defaults do nothing."""

    lr_scale = 1.0                     # learning-rate multiplier of trainable_modules()

    def __init__(self, cfg: PartConfig):
        self.cfg = cfg

    def prepare(self, setup) -> None:
        """Build the part's inputs from the experiment (`experiment.Setup`) before training."""

    def setup(self, run: RunContext) -> None:
        self.run = run

    def trainable_modules(self) -> List[torch.nn.Module]:
        return []

    def after_step(self, encoder: torch.nn.Module) -> Metrics:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        return {}


class Loss(Part):
    def loss(self, batch: Batch) -> Tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


class Regulariser(Part):
    def penalty(self, batch: Batch) -> Tuple[Optional[torch.Tensor], Metrics]:
        """The term added to the loss at this batch (None: no term at this step) and its metrics."""
        raise NotImplementedError

    def base_weight(self, step: int) -> float:
        """Multiplier of the loss part's term at `step` (1: unchanged)."""
        return 1.0


class Averager(Part):
    """A weight ensemble over training; `primary` names its evaluated model (the method's result)."""

    primary = "average"

    def average_of(self, last: State) -> State:
        """The averaged model now, as a full state built on `last` (trajectories evaluate it during training)."""
        raise NotImplementedError


@dataclass
class MethodConfig:
    """A method: one loss part, regularisers, an optional averager; `name` labels it (the preset's name)."""

    name: str
    loss: PartConfig
    regularisers: Tuple[PartConfig, ...] = ()
    averager: Optional[PartConfig] = None

    def __post_init__(self):
        self.regularisers = tuple(self.regularisers)
        roles = [("loss", self.loss)] + [("regulariser", r) for r in self.regularisers]
        if self.averager is not None:
            roles.append(("averager", self.averager))
        for role, part in roles:
            if not isinstance(part, PartConfig) or part.role != role:
                raise ValueError(f"method {self.name!r}: {part!r} is not a {role} part")
        kinds = [p.kind for p in self.parts()]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"method {self.name!r} uses a part twice: {kinds}")

    def parts(self) -> List[PartConfig]:
        return [self.loss, *self.regularisers] + ([self.averager] if self.averager is not None else [])

    def part(self, kind: str) -> Optional[PartConfig]:
        return next((p for p in self.parts() if p.kind == kind), None)

    def describe(self) -> str:
        """'mms + context-kl + bma'."""
        return " + ".join(p.kind for p in self.parts())

    def validate(self) -> None:
        for p in self.parts():
            p.validate()

    def replace_part(self, new: PartConfig) -> "MethodConfig":
        """A copy with the part of the same kind replaced by `new`."""
        if self.part(new.kind) is None:
            raise ValueError(f"method {self.name!r} has no part {new.kind!r}; its parts are {self.describe()}")
        swap = lambda p: new if p.kind == new.kind else p  # noqa: E731
        return MethodConfig(self.name, swap(self.loss), tuple(swap(r) for r in self.regularisers),
                            None if self.averager is None else swap(self.averager))

    def to_dict(self) -> dict:
        """The parts this method uses (and only those), for results.json and checkpoints."""
        return {"name": self.name, "loss": self.loss.to_dict(),
                "regularisers": [r.to_dict() for r in self.regularisers],
                "averager": None if self.averager is None else self.averager.to_dict()}


class Method:
    """The composed method the trainer runs (see the module docstring)."""

    def __init__(self, cfg: MethodConfig):
        cfg.validate()
        self.cfg, self.name = cfg, cfg.name
        self.loss_part: Loss = cfg.loss.build()
        self.regularisers: List[Regulariser] = [r.build() for r in cfg.regularisers]
        self.averager: Optional[Averager] = None if cfg.averager is None else cfg.averager.build()
        self.parts: List[Part] = [self.loss_part, *self.regularisers] + ([self.averager] if self.averager else [])

    @property
    def primary(self) -> str:
        return self.averager.primary if self.averager is not None else "last"

    def prepare(self, setup) -> None:
        for p in self.parts:
            p.prepare(setup)

    def setup(self, run: RunContext) -> None:
        for p in self.parts:
            p.setup(run)

    def trainable_groups(self) -> List[Tuple[List[torch.nn.Parameter], float]]:
        """(parameters, learning-rate multiplier) of the parts' own modules (OGEN's generator)."""
        out = []
        for p in self.parts:
            params = [q for m in p.trainable_modules() for q in m.parameters()]
            if params:
                out.append((params, p.lr_scale))
        return out

    def loss(self, batch: Batch) -> Tuple[torch.Tensor, Metrics]:
        weight = 1.0
        for r in self.regularisers:
            weight *= r.base_weight(batch.step)
        metrics: Metrics = {}
        total = None
        if weight:
            total, metrics = self.loss_part.loss(batch)
            if weight != 1.0:
                total = weight * total
        for r in self.regularisers:
            term, m = r.penalty(batch)
            metrics.update(m)
            if term is not None:
                total = term if total is None else total + term
        if total is None:
            raise ValueError(f"method {self.name!r} has no loss term at step {batch.step}")
        return total, metrics

    def after_step(self, encoder: torch.nn.Module) -> Metrics:
        out: Metrics = {}
        for p in self.parts:
            out.update(p.after_step(encoder))
        return out

    def state_dict(self) -> dict:
        states = {p.cfg.kind: p.state_dict() for p in self.parts}     # each part's state copied once
        return {kind: state for kind, state in states.items() if state}

    def load_state_dict(self, state: dict) -> None:
        for p in self.parts:
            if p.cfg.kind in state:
                p.load_state_dict(state[p.cfg.kind])

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        states = {"last": last}
        for p in self.parts:
            states.update(p.final_states(zero_shot, last))
        return states


__all__ = ["PartConfig", "Part", "Loss", "Regulariser", "Averager", "MethodConfig", "Method", "RunContext", "Batch",
           "State", "Metrics"]
