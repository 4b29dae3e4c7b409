"""Methods as compositions of parts: one loss, optional regularisers, an optional averager.

A part is a small class with a typed config holding the paper's defaults (`PartConfig` subclasses, each with a
`kind`, the name `--set KIND.FIELD=VALUE` and results.json use). A method is a `MethodConfig`: the registry
(`methods/__init__.py`) names the paper methods as presets of parts, and any other combination is a config,
not a subclass. The trainer sees one `Method`, which calls its parts in this order:

- `check(context)` and `prepare(context)` once, before any training (`MethodContext`: class names, training
  classes, the zero-shot class text features and templates, the zero-shot model, the seed, held-out images, and
  the training images' zero-shot features for a part that declares it reads them): `check`
  refuses an experiment the part cannot run on (cheap; a bench checks every method before it trains one),
  `prepare` builds what the part needs (context features, unknown class names, class feature statistics);
- `model_module(context)`: the part's module that belongs to the trained model (a head, prompt context, an
  adapter; `models.adapted.PartModule`), or None; what a method trains is the union of its parts' `trains`
  (towers: "image", "text") and these modules (`models.adapted.AdaptedCLIP`);
- `setup(run)` once, at the start of training (`RunContext`: the model, the frozen zero-shot text features of
  the training classes, the logit scale, total steps, the run's seed, device);
- every step `loss(batch)` -> (loss, metrics): the loss part's term times the product of the regularisers'
  `base_weight(step)` (OGEN switches the classification loss off during its warm-up), plus every regulariser's
  `penalty(batch)`; then, after the optimiser step, `after_step(model)` -> metrics (averagers update here);
- `final_states(zero_shot, last)` at the end: the models to evaluate, "last" plus what the parts add
  ("bma", "ema", "wise-ft@0.5", "teacher"); the averager names the method's result (`primary`).

A part's own training modules that are not part of the model (OGEN's feature generator) are named by
`trainable_modules()`; the trainer passes each through `accelerator.prepare` and sets the prepared module back
on the part under the same name, so under k processes DDP averages its gradients.

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

from clipood_kit.data.datasets import TransformedSubset
from clipood_kit.models.adapted import PartModule
from clipood_kit.models.loader import LoadedCLIP

State = Dict[str, torch.Tensor]
Metrics = Dict[str, Any]          # floats or 0-dim tensors (the trainer turns them into floats)


@dataclass
class PartConfig:
    """Base of every part's config: `kind` names the part, `role` is "loss", "regulariser" or "averager"."""

    kind: ClassVar[str] = ""
    role: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    trains: ClassVar[Tuple[str, ...]] = ()              # the towers this part trains ("image", "text")
    module: ClassVar[Optional[type]] = None             # its PartModule class, when the model holds one
    every_parameter_every_step: ClassVar[bool] = True   # False: some steps leave trained parameters without a
                                                        # gradient (DDP must then look for unused parameters)
    text_passes_per_image: ClassVar[bool] = False       # True: every image's prompts go through the text tower
                                                        # (CoCoOp): a step costs batch x classes text passes
    reads_training_features: ClassVar[bool] = False     # True: the part reads `MethodContext.training_features`
                                                        # (the engine encodes the training images for it)

    @property
    def training_free(self) -> bool:
        """True when the part's method needs no training (training-free Tip-Adapter: its model is built, not
        trained); a method is training-free when its loss part is."""
        return False

    def build(self) -> "Part":
        raise NotImplementedError

    def validate(self) -> None:
        """Refuse values the part cannot train with (before any work is done)."""

    def settled(self, given) -> "PartConfig":
        """This config with the fields that follow from others filled in, unless they are among `given` (the
        field names a user set): CoOp's n_ctx follows its ctx_init. The recorded config is the one that runs."""
        return self

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


def part_seed(seed: int, kind: str) -> int:
    """The run's seed for one part's draws: stable across processes and Python versions (crc32, not hash())."""
    return (seed * 1_000_003 + zlib.crc32(kind.encode())) % (2**31 - 1)


@dataclass(frozen=True)
class MethodContext:
    """What a method may read before training (`Part.check`, `Part.prepare`, `Part.model_module`), the same for
    every method: values and typed objects of the layers below, no callables into the engine. What costs work
    is provided only to a method whose part declares it (`PartConfig.reads_training_features`); the engine
    builds the context (`engine.experiment.Setup.method_context`)."""

    class_names: List[str]                             # every class of the dataset
    train_class_ids: List[int]                         # the classes trained on (rows of text_features)
    text_features: torch.Tensor                        # every class x D: the zero-shot classifier, normalised
    templates: List[str]                               # the prompt templates of that classifier
    protocol: str
    clip: LoadedCLIP                                   # the zero-shot model, read only: tokenize, encode_prompts,
                                                       # embed_tokens, logit_scale
    seed: int                                          # the run's training seed (`part_seed`)
    held_out: TransformedSubset                        # held-out images of the training domains and classes, in
                                                       # the evaluation transform (SWAD's validation loss)
    training_features: Optional[Dict[str, torch.Tensor]] = None   # the zero-shot image features of the training
                                    # images, {'features' (normalised), 'labels'}: given when a part declares
                                    # `reads_training_features` (Tip-Adapter's cache, OGEN's class statistics)

    def part_seed(self, kind: str) -> int:
        """The run's seed for one part's initial draws (`part_seed`)."""
        return part_seed(self.seed, kind)

    def training_features_for(self, kind: str) -> Dict[str, torch.Tensor]:
        """`training_features`, or a clear error when part `kind` did not declare that it reads them."""
        if self.training_features is None:
            raise ValueError(f"{kind} reads the training images' zero-shot features: its config must declare "
                             f"reads_training_features = True (the engine computes them only for such parts)")
        return self.training_features

    @property
    def unknown_class_ids(self) -> List[int]:
        """The classes never trained on (their names are known, their images are not)."""
        return [i for i in range(len(self.class_names)) if i not in self.train_class_ids]


@dataclass
class RunContext:
    model: torch.nn.Module             # models.adapted.AdaptedCLIP, unwrapped (averagers, teachers read it)
    text_features: torch.Tensor        # training classes x D, normalised, frozen (the zero-shot reference)
    logit_scale: float
    total_steps: int
    seed: int
    device: torch.device
    class_rows: Optional[torch.Tensor] = None   # the training classes' rows among the model's class features of
                                                # every class (None: the model's classes are the training classes)
    process_index: int = 0                      # this process and the number of processes: a batch holds rows
    num_processes: int = 1                      # process_index::num_processes of the step's global batch

    def part_seed(self, kind: str) -> int:
        """The run's seed for one part (`part_seed`)."""
        return part_seed(self.seed, kind)


@dataclass
class Batch:
    step: int                          # optimiser steps taken before this batch (0-based)
    features: torch.Tensor             # raw image features of the trained encoder, N x D
    labels: torch.Tensor               # rows of the training classes' text features
    images: torch.Tensor
    class_features: Optional[torch.Tensor] = None   # the model's class features of the training classes, C x D
    every_class_features: Optional[torch.Tensor] = None   # the same of every class, the held-out ones too (rows
                                             # `RunContext.class_rows` are `class_features`): OGEN's unknown classes
    cosines: Optional[torch.Tensor] = None   # instead, N x C class scores in cosine units, when a part adapts
                                             # them (`AdaptedCLIP.adapts_cosines`: Tip-Adapter, CoCoOp)


class Part:
    """Hooks every part may implement; the defaults do nothing."""

    lr_scale = 1.0                     # learning-rate multiplier of trainable_modules()

    def __init__(self, cfg: PartConfig):
        self.cfg = cfg

    def check(self, context: MethodContext) -> None:
        """Refuse an experiment this part cannot run on, cheaply, before any training."""

    def prepare(self, context: MethodContext) -> None:
        """Build what the part needs from the experiment, before training."""

    def model_module(self, context: MethodContext) -> Optional[PartModule]:
        """The part's module in the trained model (None: the part adds none)."""
        return None

    def setup(self, run: RunContext) -> None:
        self.run = run

    def trainable_modules(self) -> Dict[str, torch.nn.Module]:
        """{attribute name: module} of the part's own training modules outside the model (the module docstring)."""
        return {}

    def after_step(self, model: torch.nn.Module) -> Metrics:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        return {}

    def report(self) -> dict:
        """What the part decided during the run that its result depends on (SWAD's window), after
        `final_states`; a 'note' says what a user must know. Recorded in results.json as `method_report`."""
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

    @property
    def training_free(self) -> bool:
        """The method's model is built by its parts' `prepare`/`model_module` and scored without training."""
        return self.cfg.loss.training_free

    @property
    def trains(self) -> Tuple[str, ...]:
        """The towers the method trains (the union of its parts')."""
        return tuple(t for t in ("image", "text") if any(t in p.cfg.trains for p in self.parts))

    @property
    def reads_training_features(self) -> bool:
        """A part reads the training images' zero-shot features (`MethodContext.training_features`)."""
        return any(p.cfg.reads_training_features for p in self.parts)

    @property
    def every_parameter_every_step(self) -> bool:
        return all(p.cfg.every_parameter_every_step for p in self.parts)

    def cost_note(self, batch_size: int, n_classes: int, limit: int = 4096) -> Optional[str]:
        """A warning when a step costs more than `limit` text-tower passes (a per-image prompt part), else None."""
        kinds = [p.cfg.kind for p in self.parts if p.cfg.text_passes_per_image]
        passes = batch_size * n_classes
        if not kinds or passes <= limit:
            return None
        return (f"{'+'.join(kinds)} runs the text tower once per image and class: batch {batch_size} x {n_classes} "
                f"classes = {passes:,} prompt passes a step, with activations for each (the official recipe uses "
                f"batch 1); memory and time grow with the batch: lower --batch-size")

    def check(self, context: MethodContext) -> None:
        for p in self.parts:
            p.check(context)

    def prepare(self, context: MethodContext) -> None:
        self.check(context)
        for p in self.parts:
            p.prepare(context)

    def model_modules(self, context: MethodContext) -> Dict[str, PartModule]:
        """{part kind: module} of the parts' modules in the model."""
        out = {}
        for p in self.parts:
            module = p.model_module(context)
            if module is not None:
                out[p.cfg.kind] = module
        return out

    def setup(self, run: RunContext) -> None:
        for p in self.parts:
            p.setup(run)

    def training_modules(self) -> List[Tuple[Part, str, torch.nn.Module]]:
        """(part, attribute, module) of every part's own training module (OGEN's generator)."""
        return [(p, name, m) for p in self.parts for name, m in p.trainable_modules().items()]

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

    def after_step(self, model: torch.nn.Module) -> Metrics:
        out: Metrics = {}
        for p in self.parts:
            out.update(p.after_step(model))
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

    def report(self) -> Dict[str, dict]:
        """{part kind: its `Part.report()`} for the parts that report something."""
        return {p.cfg.kind: r for p in self.parts for r in [p.report()] if r}

    def notes(self) -> List[str]:
        """The reports' notes, each as 'KIND: note'."""
        return [f"{kind}: {r['note']}" for kind, r in self.report().items() if r.get("note")]


__all__ = ["PartConfig", "Part", "Loss", "Regulariser", "Averager", "MethodConfig", "Method", "RunContext", "Batch",
           "MethodContext",
           "State", "Metrics"]
