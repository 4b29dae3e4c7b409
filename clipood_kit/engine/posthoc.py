"""Weight ensembles after the fact: from one run's trajectory, the BMA model for any (alpha, beta), the EMA for
any decay and the WiSE-FT model for any mix, without retraining (each is a fixed weighting of the states).

`Trajectory` holds the trained parameters of a model state (`models.adapted.AdaptedCLIP`) over a run as one (K x P) fp32 matrix, one row per recorded
step (t = 0 is the zero-shot model), buffers from the last state. Recorded every step it is exact:

    BMA(a, b)  = sum_t w_t theta_t / sum_t w_t,  w_t = BetaPDF((t + 0.5) / (T + 1); a, b)   (CLIPood Eq. 7-8)
    EMA(d)     = d^T theta_0 + sum_{t>=1} (1 - d) d^(T-t) theta_t
    WiSE-FT(a) = (1 - a) theta_0 + a theta_T                                                 (WiSE-FT Eq. 1)

Memory: (T + 1) x P x 4 bytes; the tiny CLIP's image tower has 1.36 M parameters, so 120 steps take 659 MB.
For large models, record every k steps (`every=k`): each snapshot then stands for the steps nearest to it and
takes the sum of their weights (the Beta weight integrated over its interval), an approximation whose error
against the exact average `tests/test_posthoc.py` measures. During training, `bma-grid` (an averager part in
`methods/averagers.py`) keeps exact running averages for a fixed grid of (a, b) instead.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from clipood_kit.methods.averaging import beta_weights
from clipood_kit.methods.base import Method
from clipood_kit.models.adapted import AdaptedCLIP

State = Dict[str, torch.Tensor]


def trained_state(model: torch.nn.Module) -> State:
    """What a model trains (`AdaptedCLIP.trained_state`); every entry of any other module."""
    if isinstance(model, AdaptedCLIP):
        return model.trained_state()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Trajectory:
    """Parameter states of one run (see the module docstring). Record with `recorder()` as `run_method`'s
    `on_step`, after `start(zero_shot_state)`."""

    def __init__(self, total_steps: int, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.total_steps, self.every = total_steps, every
        self.steps: List[int] = []
        self.rows: List[torch.Tensor] = []
        self.names: List[str] = []
        self.template: Optional[State] = None
        self._matrix: Optional[torch.Tensor] = None

    # -- recording ---------------------------------------------------------------------------------------
    def _add(self, step: int, state: State, params: List[str]) -> None:
        if not self.names:
            self.names = params
            self.shapes = [state[n].shape for n in params]
        self.steps.append(step)
        self.rows.append(torch.cat([state[n].detach().float().reshape(-1).cpu() for n in self.names]))
        self._matrix = None

    def start(self, zero_shot: State, parameter_names: List[str]) -> "Trajectory":
        """Record t = 0 (the zero-shot state); `parameter_names` are the averaged entries (buffers are not)."""
        self._add(0, zero_shot, list(parameter_names))
        return self

    def recorder(self):
        """An `on_step(row, model, method)` callback that records the model every `every` steps and at the end."""
        def on_step(row: dict, model: AdaptedCLIP, method: Method):
            step = row["step"]
            if step % self.every == 0 or step == self.total_steps:
                self._add(step, model.state_dict(), self.names)
            if step == self.total_steps:
                self.template = trained_state(model)
        return on_step

    @property
    def matrix(self) -> torch.Tensor:
        """K x P, one row per recorded step (built once, then the rows share its memory)."""
        if self._matrix is None:
            self._matrix = torch.stack(self.rows)
            self.rows = list(self._matrix)
        return self._matrix

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows)

    # -- ensembles ---------------------------------------------------------------------------------------
    def weighted(self, step_weights: torch.Tensor) -> State:
        """The state sum_k W_k theta_k / sum_k W_k over the recorded rows (buffers from the last state)."""
        if self.template is None or self.steps[-1] != self.total_steps:
            raise ValueError("the trajectory is incomplete: record a whole run first")
        w = step_weights.double() / step_weights.double().sum()
        flat = w.float() @ self.matrix
        out = dict(self.template)
        offset = 0
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            out[name] = flat[offset:offset + n].reshape(shape).to(self.template[name].dtype)
            offset += n
        return out

    def row_weights(self, per_step: List[float]) -> torch.Tensor:
        """Per-step weights (t = 0..T) folded onto the recorded rows: each step's weight goes to the nearest
        recorded step (ties to the later one), so with every step recorded they are the weights themselves."""
        steps = torch.tensor(self.steps)
        t = torch.arange(self.total_steps + 1)
        right = torch.searchsorted(steps, t).clamp(max=len(steps) - 1)     # first recorded step >= t
        left = (right - 1).clamp(min=0)
        nearest = torch.where(steps[right] - t <= t - steps[left], right, left)
        out = torch.zeros(len(self.steps), dtype=torch.float64)
        out.index_add_(0, nearest, torch.tensor(per_step, dtype=torch.float64))
        return out

    def bma(self, alpha: float, beta: float) -> State:
        return self.weighted(self.row_weights(beta_weights(self.total_steps, alpha, beta)))

    def ema(self, decay: float) -> State:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        T = self.total_steps
        per_step = [decay ** T] + [(1 - decay) * decay ** (T - t) for t in range(1, T + 1)]
        return self.weighted(self.row_weights(per_step))

    def wise(self, mix: float) -> State:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        w = torch.zeros(len(self.steps), dtype=torch.float64)
        w[0], w[-1] = 1.0 - mix, mix
        return self.weighted(w)
