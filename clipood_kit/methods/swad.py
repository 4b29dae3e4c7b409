"""SWAD, stochastic weight averaging densely over the validation loss valley (Cha et al., "SWAD: Domain
Generalization by Seeking Flat Minima", NeurIPS 2021; official code github.com/khanrc/swad, `domainbed/swad.py`
`LossValley`, and `domainbed/trainer.py` lines 178-257).

Training is cut into segments. A segment's model is the dense mean of the weights after each of its steps
(`trainer.py` line 180, reset at line 257); the official trainer closes a segment at `step % checkpoint_freq == 0`
with its step counted from 0 (line 182), so the first segment is the first update alone and the later ones end
after updates 1 + F, 1 + 2F, ... (F = `every`); here too. At a segment's end the current model's loss on held-out
images of the training domains is measured (`tr_outloss`, line 250). `LossValley.update_and_evaluate`
(swad.py lines 83-144) then decides which segments enter the final average:

- **start** (convergence): once `n_converge` segments are queued, if the first of them has the lowest loss, the
  loss has stopped falling: the threshold is set to mean(their losses) x (1 + tolerance_ratio), and the queued
  segments after it join (lines 96-123; with n_tolerance > n_converge, the segments of the smoothing queue below
  the threshold). The official code holds the until-minimum segment in a fresh `AveragedModel` (line 100), whose
  count starts at 0 (`swa_utils.py` line 26), so the first segment to join **overwrites** it (lines 61-62): the
  until-minimum segment is the result only when no other segment joins. Here too (`RunningMean.hold`);
- **valley**: afterwards, each segment leaving the smoothing window of `n_tolerance` segments joins while the
  smallest loss in that window stays under the threshold; once it rises above, the valley is dead and nothing
  joins any more (lines 131-144);
- **end** (`get_final_model`, lines 146-162): the segments still in the window join while the smallest loss of
  what remains stays under the threshold; without convergence, the last segment is the result.
  A quirk of the official rule, kept: when it converges before `n_tolerance` segments are queued, the valley
  step joins `smooth_Q[0]` while the queue still fills, so the first segments join more than once (converged at
  the first of 12 segments on the bench: 16 joins of 12 distinct segments); the report counts both.

The final model is the equal-weight mean of the segments that joined (`swa_utils.AveragedModel`), which is the
dense mean of every step in the window. `report()` says what happened (converged or not, the window, whether the
valley closed before the run ended); results.json records it under `method_report`. Defaults are the official
config.yaml's (n_converge 3, n_tolerance 6, tolerance_ratio 0.3). Deviations, each named: the validation images are the experiment's held-out images of its
training domains and classes (DomainBed's training-domain "out" split, which is what they are), which are also
the bench's "train domains / base" test cell, so that one cell is not independent of SWAD's window (the unseen
domains and new classes are); training does not stop when the valley dies (the official trainer does, line 253:
it saves time and leaves the average unchanged); a run too short for `n_converge` segments is refused (it could
only return its last segment); `every` is 10 steps (official checkpoint_freq: 200 of DomainBed's
5,000 steps, the same share of a run for the bench's 120).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional

import torch
import torch.nn.functional as F

from clipood_kit.methods.averaging import _parameters, with_average
from clipood_kit.methods.base import Averager, Metrics, PartConfig, MethodContext, RunContext, State


@dataclass
class Segment:
    """A segment's mean weights (parameters that train, fp32), its steps and the validation loss at its end."""

    average: Dict[str, torch.Tensor]
    start_step: int
    end_step: int
    end_loss: float


class RunningMean:
    """The equal-weight mean of the models given to `add` (swa_utils.AveragedModel.update_parameters)."""

    def __init__(self):
        self.average: Optional[Dict[str, torch.Tensor]] = None
        self.count = 0
        self.start_step = self.end_step = -1
        self.joined: List[List[int]] = []          # [start, end] of each model added (SWAD's report)

    @classmethod
    def hold(cls, weights: Dict[str, torch.Tensor]) -> "RunningMean":
        """`AveragedModel(model)`: holds `weights` with a count of 0, so the first `add` replaces them."""
        mean = cls()
        mean.average = {n: t.detach().float().clone() for n, t in weights.items()}
        return mean

    def add(self, weights: Dict[str, torch.Tensor], start_step: int, end_step: int) -> None:
        if self.count == 0:
            self.average = {n: t.detach().float().clone() for n, t in weights.items()}
            self.start_step = start_step
        else:
            for n, t in weights.items():
                self.average[n] += (t.detach().float() - self.average[n]) / (self.count + 1)
        self.count += 1
        self.end_step = end_step
        self.joined.append([start_step, end_step])


class LossValley:
    """The official window rule (module docstring), over `Segment`s."""

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float):
        self.n_converge, self.n_tolerance, self.tolerance_ratio = n_converge, n_tolerance, tolerance_ratio
        self.converge_q: deque = deque(maxlen=n_converge)
        self.smooth_q: deque = deque(maxlen=n_tolerance)
        self.final: Optional[RunningMean] = None
        self.converge_step: Optional[int] = None
        self.dead_valley = False
        self.threshold: Optional[float] = None

    def _smooth_loss(self, idx: int) -> float:
        return min(s.end_loss for s in list(self.smooth_q)[idx:])

    def _join(self, s: Segment) -> None:
        self.final.add(s.average, s.start_step, s.end_step)

    def update(self, segment: Segment) -> None:
        if self.dead_valley:
            return
        self.converge_q.append(segment)
        self.smooth_q.append(segment)
        if self.converge_step is None:
            if len(self.converge_q) < self.n_converge:
                return
            losses = [s.end_loss for s in self.converge_q]
            min_idx = losses.index(min(losses))
            if min_idx == 0:
                self.converge_step = self.converge_q[0].end_step
                self.final = RunningMean.hold(self.converge_q[0].average)      # count 0: the next join replaces it
                self.threshold = sum(losses) / len(losses) * (1.0 + self.tolerance_ratio)
                if self.n_tolerance < self.n_converge:
                    for i in range(self.n_converge - self.n_tolerance):
                        self._join(self.converge_q[1 + i])
                elif self.n_tolerance > self.n_converge:
                    queue = list(self.smooth_q)[: self.n_tolerance - self.n_converge + 1]
                    start_idx = 0
                    for i in reversed(range(len(queue))):
                        if queue[i].end_loss > self.threshold:
                            start_idx = i + 1
                            break
                    for s in queue[start_idx + 1:]:
                        self._join(s)
            return
        if self.smooth_q[0].end_step < self.converge_step:
            return
        if self._smooth_loss(0) > self.threshold:
            self.dead_valley = True
            return
        self._join(self.smooth_q[0])

    def result(self) -> Dict[str, torch.Tensor]:
        """The final average (`get_final_model`); the queues are consumed, so call it once."""
        if self.converge_step is None:
            return self.converge_q[-1].average
        if not self.dead_valley:
            self.smooth_q.popleft()
            while self.smooth_q:
                if self._smooth_loss(0) > self.threshold:
                    break
                s = self.smooth_q.popleft()
                self.final.add(s.average, s.end_step, s.end_step)          # official: update_parameters(step=end)
                self.final.joined[-1] = [s.start_step, s.end_step]
        return self.final.average


@dataclass
class SWADConfig(PartConfig):
    kind: ClassVar[str] = "swad"
    role: ClassVar[str] = "averager"
    summary: ClassVar[str] = ("SWAD: dense weight average over the validation loss valley, found in segments of "
                              "`every` steps")
    every: int = 10                  # steps per segment (official checkpoint_freq; module docstring)
    n_converge: int = 3              # official config.yaml
    n_tolerance: int = 6
    tolerance_ratio: float = 0.3
    validation_images: int = 512     # at most this many held-out images for the validation loss (seeded subset)

    def segments(self, steps: int) -> int:
        """Segments a run of `steps` updates ends: after update 1, then every `every` updates (module docstring)."""
        return 0 if steps < 1 else 1 + (steps - 1) // self.every

    def validate(self) -> None:
        for name in ("every", "n_converge", "n_tolerance", "validation_images"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"swad.{name} must be an integer >= 1, got {value!r}")
        if not (self.tolerance_ratio >= 0 and math.isfinite(self.tolerance_ratio)):
            raise ValueError(f"swad.tolerance_ratio must be finite and >= 0, got {self.tolerance_ratio}")

    def build(self) -> "SWAD":
        return SWAD(self)


class SWAD(Averager):
    primary = "swad"

    def check(self, context: MethodContext) -> None:
        if len(context.held_out) == 0:
            raise ValueError("swad needs held-out images of the training domains and classes; the experiment has "
                             "none (raise holdout_fraction)")

    def prepare(self, context: MethodContext) -> None:
        """The validation images: at most `validation_images` of the held-out images of the training domains and
        classes, drawn with the part's seed (kept in the held-out order)."""
        held, n = context.held_out, self.cfg.validation_images
        picks = torch.arange(len(held))
        if len(held) > n:
            gen = torch.Generator().manual_seed(context.part_seed(self.cfg.kind))
            picks = torch.randperm(len(held), generator=gen)[:n].sort().values
        rows = {c: i for i, c in enumerate(context.train_class_ids)}
        self.images = torch.stack([held[int(i)][0] for i in picks])
        self.rows = torch.tensor([rows[int(c)] for c in held.labels[picks]])
        self.train_ids = torch.tensor(context.train_class_ids)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        n = self.cfg.segments(run.total_steps)
        if n < self.cfg.n_converge:
            fit = max(1, (run.total_steps - 1) // max(1, self.cfg.n_converge - 1)) if run.total_steps > 1 else 1
            raise ValueError(f"swad needs n_converge={self.cfg.n_converge} segments to find the loss valley, but "
                             f"{run.total_steps} steps with swad.every={self.cfg.every} end only {n}: set "
                             f"--set swad.every={fit} or train more steps")
        self.valley = LossValley(self.cfg.n_converge, self.cfg.n_tolerance, self.cfg.tolerance_ratio)
        self.segment = RunningMean()
        self.step = 0
        self.losses: List[float] = []

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        """Mean cross-entropy over the training classes of the current model on the validation images (`tr_outloss`)."""
        modes = {m: m.training for m in model.modules()}       # the trainer keeps batch norm in eval mode
        model.eval()
        param = next(model.visual.parameters())
        total, classes = 0.0, model.class_features()
        for images, rows in zip(self.images.split(256), self.rows.split(256)):
            features = model.image_features(images.to(param.device, param.dtype))
            logits = self.run.logit_scale * model.cosines(features, classes)[:, self.train_ids.to(features.device)]
            total += F.cross_entropy(logits.float(), rows.to(logits.device), reduction="sum").item()
        for m, mode in modes.items():
            m.training = mode
        return total / len(self.rows)

    def after_step(self, model) -> Metrics:
        self.step += 1
        weights = dict(_parameters(model))
        self.segment.add(weights, self.step, self.step)
        if (self.step - 1) % self.cfg.every:            # the official `step % checkpoint_freq == 0`, step from 0
            return {}
        loss = self.validation_loss(model)
        self.losses.append(loss)
        self.valley.update(Segment(self.segment.average, self.segment.start_step, self.step, loss))
        self.segment = RunningMean()
        return {"validation_loss": loss, "swad_dead_valley": float(self.valley.dead_valley)}

    def state_dict(self) -> dict:
        """Everything the window rule holds (checkpoints): the queued segments, the running means, the counters."""
        v = self.valley
        segments = {f"s{seg.end_step}": seg for seg in [*v.converge_q, *v.smooth_q]}
        return {"step": self.step, "losses": list(self.losses), "segment": _mean_state(self.segment),
                "final": _mean_state(v.final) if v.final is not None else {},
                "segments": {k: {"average": seg.average, "start_step": seg.start_step, "end_step": seg.end_step,
                                 "end_loss": seg.end_loss} for k, seg in segments.items()},
                "converge_q": [f"s{seg.end_step}" for seg in v.converge_q],
                "smooth_q": [f"s{seg.end_step}" for seg in v.smooth_q],
                "converge_step": v.converge_step, "dead_valley": v.dead_valley, "threshold": v.threshold}

    def load_state_dict(self, state: dict) -> None:
        v = self.valley
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self.segment = _mean_from(state["segment"])
        segments = {k: Segment(dict(d.get("average", {})), int(d["start_step"]), int(d["end_step"]), float(d["end_loss"]))
                    for k, d in state.get("segments", {}).items()}
        v.converge_q.extend(segments[k] for k in state["converge_q"])
        v.smooth_q.extend(segments[k] for k in state["smooth_q"])
        v.final = _mean_from(state["final"]) if state.get("final") else None
        v.converge_step, v.dead_valley, v.threshold = state["converge_step"], state["dead_valley"], state["threshold"]

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        average = self.valley.result()
        self._report = self._window_report()
        return {self.primary: with_average(last, average)}

    def _window_report(self) -> dict:
        v = self.valley
        out = {"segments": len(self.losses), "converged": v.converge_step is not None,
               "converge_step": v.converge_step, "dead_valley": v.dead_valley, "threshold": v.threshold}
        if v.converge_step is None:
            out["averaged"] = "the last segment"
            out["note"] = (f"the validation loss never stopped falling ({len(self.losses)} segments; convergence "
                           f"needs the first of {self.cfg.n_converge} queued segments to be the lowest): 'swad' "
                           f"is the last segment's mean, as the official get_final_model returns; train longer or "
                           f"set a smaller swad.every")
            return out
        mean = v.final
        out["window"] = [min(j[0] for j in mean.joined), max(j[1] for j in mean.joined)] if mean.joined else None
        out["segment_joins"] = mean.count
        out["distinct_segments"] = len({tuple(j) for j in mean.joined})
        if not mean.count:
            out["note"] = "no segment joined the until-minimum segment: 'swad' is that segment's mean"
        elif not v.dead_valley:
            out["note"] = (f"the loss valley was still open when the run ended (step {self.step}): the window ends "
                           f"with the run, a longer run could average more")
        return out

    def report(self) -> dict:
        return getattr(self, "_report", {})


def _mean_state(mean: RunningMean) -> dict:
    return {"average": mean.average or {}, "count": mean.count, "start_step": mean.start_step,
            "end_step": mean.end_step, "joined": [list(j) for j in mean.joined]}


def _mean_from(state: dict) -> RunningMean:
    mean = RunningMean()
    mean.count, mean.start_step, mean.end_step = int(state["count"]), int(state["start_step"]), int(state["end_step"])
    mean.average = dict(state["average"]) if state.get("average") else None
    mean.joined = [list(map(int, j)) for j in state.get("joined", [])]
    return mean
