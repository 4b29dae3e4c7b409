"""The method registry: every method is registered once, with what the benches need to know about it.

A registration is a `MethodConfig` (its parts, each with the paper's defaults), its family, the benches it joins
(`demo`, `compare`, `study`) and, for a few-shot method, its official training budget (`FewShotBudget`, with the
script and lines it comes from). The benches read the registry: `compare` runs every method registered for it,
the OOD study every method registered for it, each with its budget. So a new method is **one module** (its part,
its config and one `register(...)` line at its end) **and its test**: `methods/__init__.py` imports every module
of this package, and no other file changes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from clipood_kit.methods.base import MethodConfig

FAMILIES = ("fine-tuning", "averaging", "prompt", "adapter")
BENCHES = ("demo", "compare", "study")


@dataclass(frozen=True)
class FewShotBudget:
    """A few-shot method's official schedule: epochs of the few-shot set by shot count (the largest key not
    above the shots) or, for a schedule counted in steps, `steps_per_shot` x shots steps; batch, optimiser,
    learning rate, schedule ("dassl": one constant warm-up epoch, then cosine over the epochs; "cosine": cosine
    over every step), weight decay, and the script it comes from."""

    epochs: Dict[int, int]
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    schedule: str = "dassl"
    weight_decay: float = 5e-4          # Dassl's OPTIM.WEIGHT_DECAY (`dassl/config/defaults.py`)
    source: str = ""
    steps_per_shot: int = 0             # > 0: the schedule counts steps (CLIP-LoRA: 500 x shots), not epochs

    def steps_for(self, shots: int) -> int:
        return self.steps_per_shot * shots

    def epochs_for(self, shots: int) -> int:
        return self.epochs[max([k for k in self.epochs if k <= shots] or [min(self.epochs)])]


@dataclass(frozen=True)
class Registration:
    method: MethodConfig
    family: str
    benches: Tuple[str, ...] = ()
    budget: Optional[FewShotBudget] = None
    module: str = field(default="", compare=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.method.name!r}: family {self.family!r} is not one of {FAMILIES}")
        unknown = [b for b in self.benches if b not in BENCHES]
        if unknown:
            raise ValueError(f"method {self.method.name!r}: unknown bench(es) {unknown}; benches are {BENCHES}")


REGISTRY: Dict[str, Registration] = {}


def register(method: MethodConfig, family: str, benches: Tuple[str, ...] = (),
             budget: Optional[FewShotBudget] = None) -> Registration:
    """Add a method to the registry (once per name)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice ({REGISTRY[method.name].module} and again)")
    caller = sys._getframe(1).f_globals.get("__name__", "")      # the registering module (no source reads)
    REGISTRY[method.name] = entry = Registration(method, family, tuple(benches), budget, caller)
    return entry


def methods_for(bench: str) -> Tuple[str, ...]:
    """The registered methods a bench runs, in registration order."""
    return tuple(name for name, r in REGISTRY.items() if bench in r.benches)


def budgets() -> Dict[str, FewShotBudget]:
    """Every registered method's official few-shot budget, by name."""
    return {name: r.budget for name, r in REGISTRY.items() if r.budget is not None}


__all__ = ["BENCHES", "FAMILIES", "FewShotBudget", "REGISTRY", "Registration", "budgets", "methods_for", "register"]
