"""Weight averaging over training: Beta moving average (CLIPood), EMA, and WiSE-FT interpolation.

BMA, CLIPood (Shu et al., ICML 2023, Sec. 3.3, Eq. 7-8): over T optimisation steps, the state after step t
(t = 0 is the zero-shot model) gets the weight

    w_t = BetaPDF((t + 0.5) / (T + 1); alpha, beta),   t = 0..T

and the average is the exact weighted mean sum_t w_t theta_t / sum_t w_t, kept as a running update after each
step t >= 1:  r = w_t / sum_{k<t} w_k,  avg = (avg + r * theta_t) / (1 + r).  The average is held in fp32
whatever precision training runs in (the official code keeps it in fp16, which rounds late contributions away).
Only parameters are averaged (buffers are not), as in the official code.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_total_steps(total_steps: int) -> None:
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")


def beta_pdf(x: float, alpha: float, beta: float) -> float:
    """Density of Beta(alpha, beta) at x in (0, 1)."""
    log_b = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    return math.exp((alpha - 1) * math.log(x) + (beta - 1) * math.log1p(-x) - log_b)


def beta_weights(total_steps: int, alpha: float, beta: float) -> List[float]:
    """The total_steps + 1 unnormalised BMA weights w_t = BetaPDF((t + 0.5) / (total_steps + 1)), t = 0..T."""
    _check_total_steps(total_steps)
    _check_positive("alpha", alpha)
    _check_positive("beta", beta)
    return [beta_pdf((t + 0.5) / (total_steps + 1), alpha, beta) for t in range(total_steps + 1)]


def zero_shot_share(weights: List[float]) -> List[float]:
    """After each step t, the share of the zero-shot model (t = 0) in the average: w_0 / sum_{k<=t} w_k."""
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(weights[0] / total)
    return out


def _parameters(module: torch.nn.Module) -> Iterable[Tuple[str, torch.nn.Parameter]]:
    """The parameters that train (a frozen tower is not averaged: it equals its zero-shot weights throughout)."""
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)


def _lerp_into(average: Dict[str, torch.Tensor], module: torch.nn.Module, weight: float) -> None:
    """average <- average + weight * (theta - average) for every parameter, in fp32, fused over tensors."""
    names, thetas = zip(*((n, p.detach()) for n, p in _parameters(module)))
    avgs = [average[n] for n in names]
    thetas = [t if t.dtype == torch.float32 else t.float() for t in thetas]
    torch._foreach_lerp_(avgs, thetas, weight)


class BetaMovingAverage:
    """Running Beta-weighted mean of a module's parameters over `total_steps` optimiser steps (fp32).

    Build it from the module before training (that state is t = 0), call `update(module)` after every
    optimiser step, and `copy_to(module)` to load the average.
    """

    def __init__(self, module: torch.nn.Module, total_steps: int, alpha: float = 0.5, beta: float = 0.5):
        self.weights = beta_weights(total_steps, alpha, beta)
        self.total_steps, self.alpha, self.beta = total_steps, alpha, beta
        self.average: Dict[str, torch.Tensor] = {n: p.detach().float().clone() for n, p in _parameters(module)}
        self.step = 0
        self.weight_sum = self.weights[0]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> float:
        """Fold in the module's state after the next step; returns that step's weight w_t.

        (avg + r * theta) / (1 + r) is computed as lerp(avg, theta, r / (1 + r)), one fused call for all tensors.
        """
        if self.step >= self.total_steps:
            raise ValueError(f"update after the last step: the average was built for total_steps={self.total_steps} "
                             f"and has taken all of them; build it with the true number of steps")
        self.step += 1
        w = self.weights[self.step]
        r = w / self.weight_sum
        _lerp_into(self.average, module, r / (1.0 + r))
        self.weight_sum += w
        return w

    @property
    def zero_shot_share(self) -> float:
        """Share of the t = 0 (zero-shot) state in the current average."""
        return self.weights[0] / self.weight_sum

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> torch.nn.Module:
        """Write the average into a module of the same structure (a frozen copy too: a teacher)."""
        params = dict(module.named_parameters())
        for n, avg in self.average.items():
            params[n].copy_(avg.to(params[n].dtype))
        return module

    def state_dict(self) -> dict:
        return {"average": {n: t.clone() for n, t in self.average.items()}, "step": self.step,
                "weight_sum": self.weight_sum, "total_steps": self.total_steps, "alpha": self.alpha, "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        if (state["total_steps"], state["alpha"], state["beta"]) != (self.total_steps, self.alpha, self.beta):
            raise ValueError(f"BMA state was saved for total_steps={state['total_steps']}, alpha={state['alpha']}, "
                             f"beta={state['beta']}; this run has {self.total_steps}, {self.alpha}, {self.beta}")
        self.average = {n: t.float().clone() for n, t in state["average"].items()}
        self.step = int(state["step"])
        self.weight_sum = float(state["weight_sum"])


class ExponentialMovingAverage:
    """avg = decay * avg + (1 - decay) * theta after every step, in fp32, starting from the zero-shot state."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.99):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.average = {n: p.detach().float().clone() for n, p in _parameters(module)}
        self.step = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> float:
        self.step += 1
        _lerp_into(self.average, module, 1.0 - self.decay)
        return 1.0 - self.decay

    @property
    def zero_shot_share(self) -> float:
        return self.decay ** self.step

    copy_to = BetaMovingAverage.copy_to

    def state_dict(self) -> dict:
        return {"average": {n: t.clone() for n, t in self.average.items()}, "step": self.step, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.average = {n: t.float().clone() for n, t in state["average"].items()}
        self.step, self.decay = int(state["step"]), float(state["decay"])


def with_average(state: Dict[str, torch.Tensor], average: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy of a module state with its parameters replaced by an average's (in the state's dtypes); buffers
    and anything the average lacks are kept."""
    out = dict(state)
    out.update({n: t.to(state[n].dtype) for n, t in average.items()})
    return out


def interpolate(zero_shot: Dict[str, torch.Tensor], fine_tuned: Dict[str, torch.Tensor], mix: float) -> Dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., CVPR 2022, Eq. 1): theta(a) = (1 - a) * theta_zeroshot + a * theta_finetuned.

    Floating tensors are mixed; other entries (integer buffers) are taken from the fine-tuned state.
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix (WiSE-FT alpha) must be in [0, 1], got {mix}")
    if zero_shot.keys() != fine_tuned.keys():
        raise ValueError("zero-shot and fine-tuned states have different keys; they must be the same architecture")
    return {k: (torch.lerp(zero_shot[k].float(), fine_tuned[k].float(), mix).to(fine_tuned[k].dtype)
                if fine_tuned[k].is_floating_point() else fine_tuned[k].clone())
            for k in fine_tuned}


class LocalMeanTeacher:
    """Mean teacher over a growing window of recent states: the teacher of OGEN's adaptive self-distillation.

    OGEN (Zang et al., ICLR 2024, Sec. 3.3) distils from a mean teacher over a local window of recent model
    states whose size grows during training; its released code lacks this part, so the rule is ours:

    - snapshots of the parameters (fp32) are taken at t = 0 and every `stride = ceil(T / max_snapshots)` steps
      (and at the last step);
    - after step t the window is [t - ceil(fraction * t), t]: it covers the latest `fraction` of the training
      so far, so it grows linearly with t (early states, far from the current one, drop out);
    - the teacher (`average`) is the uniform mean of the snapshots inside the window (the newest snapshot alone when the
      window holds none yet).

    At most about fraction * max_snapshots + 1 snapshots are held at any time.
    """

    def __init__(self, module: torch.nn.Module, total_steps: int, fraction: float = 0.25, max_snapshots: int = 40):
        _check_total_steps(total_steps)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction (the window's share of the steps so far) must be in (0, 1], got {fraction}")
        if not isinstance(max_snapshots, int) or max_snapshots < 1:
            raise ValueError(f"max_snapshots must be an integer >= 1, got {max_snapshots!r}")
        self.total_steps, self.fraction, self.max_snapshots = total_steps, fraction, max_snapshots
        self.stride = math.ceil(total_steps / max_snapshots)
        self.step = 0
        self.snapshots: Dict[int, Dict[str, torch.Tensor]] = {0: self._copy(module)}
        self.average = {n: t.clone() for n, t in self.snapshots[0].items()}

    @staticmethod
    def _copy(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
        return {n: p.detach().float().clone() for n, p in _parameters(module)}

    def window_start(self, step: int) -> int:
        return step - math.ceil(self.fraction * step)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> bool:
        """Account for the next optimiser step; True when the teacher changed."""
        if self.step >= self.total_steps:
            raise ValueError(f"update after the last step: the teacher was built for total_steps={self.total_steps}")
        self.step += 1
        changed = False
        if self.step % self.stride == 0 or self.step == self.total_steps:
            self.snapshots[self.step] = self._copy(module)
            changed = True
        start, newest = self.window_start(self.step), max(self.snapshots)
        for s in [s for s in self.snapshots if s < start and s != newest]:
            del self.snapshots[s]
            changed = True
        if changed:
            self._recompute()
        return changed

    def _recompute(self) -> None:
        states = list(self.snapshots.values())
        names = list(states[0])
        mean = [states[0][n].clone() for n in names]
        for state in states[1:]:
            torch._foreach_add_(mean, [state[n] for n in names])
        torch._foreach_div_(mean, float(len(states)))
        self.average = dict(zip(names, mean))

    @property
    def window(self) -> List[int]:
        """Steps of the snapshots the teacher averages."""
        return sorted(self.snapshots)

    copy_to = BetaMovingAverage.copy_to

    def state_dict(self) -> dict:
        state = {f"snapshot_{s:06d}": {n: t.clone() for n, t in snap.items()} for s, snap in self.snapshots.items()}
        state.update(step=self.step, total_steps=self.total_steps, fraction=self.fraction,
                     max_snapshots=self.max_snapshots)
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = (state["total_steps"], state["fraction"], state["max_snapshots"])
        if saved != (self.total_steps, self.fraction, self.max_snapshots):
            raise ValueError(f"teacher state was saved for (total_steps, fraction, max_snapshots)={saved}; this run has "
                             f"{(self.total_steps, self.fraction, self.max_snapshots)}")
        self.step = int(state["step"])
        self.snapshots = {int(k.split("_")[1]): {n: t.float().clone() for n, t in v.items()}
                          for k, v in state.items() if k.startswith("snapshot_")}
        self._recompute()
