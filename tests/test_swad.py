"""SWAD (methods/swad.py): the loss-valley window against a transcription of the official rule (khanrc/swad
`domainbed/swad.py` `LossValley`, lines 48-162, with `swa_utils.AveragedModel`), the dense mean over the window in
a real run, and a stopped and resumed run equal to an uninterrupted one."""
import copy
import random
from collections import deque

import numpy as np
import pytest
import torch

from clipood_kit.methods.swad import LossValley, Segment


class Averaged:
    """swa_utils.AveragedModel on one scalar weight: running mean, start and end steps."""

    def __init__(self, model):
        self.w, self.n, self.start_step, self.end_step = 0.0, 0, -1, -1
        self.update_parameters(model, start_step=model.start_step, end_step=model.end_step)

    def update_parameters(self, model, step=None, start_step=None, end_step=None):
        self.w = model.w if self.n == 0 else self.w + (model.w - self.w) / (self.n + 1)
        self.n += 1
        if step is not None:
            start_step = step if start_step is None else start_step
            end_step = step if end_step is None else end_step
        if start_step is not None and self.n == 1:
            self.start_step = start_step
        if end_step is not None:
            self.end_step = end_step


class Seg:
    def __init__(self, w, start_step, end_step):
        self.w, self.start_step, self.end_step = w, start_step, end_step


class OfficialLossValley:
    """swad.py LossValley, transcribed (printing and devices left out)."""

    def __init__(self, n_converge, n_tolerance, tolerance_ratio):
        self.n_converge, self.n_tolerance, self.tolerance_ratio = n_converge, n_tolerance, tolerance_ratio
        self.converge_Q, self.smooth_Q = deque(maxlen=n_converge), deque(maxlen=n_tolerance)
        self.final_model, self.converge_step, self.dead_valley, self.threshold = None, None, False, None

    def get_smooth_loss(self, idx):
        return min([model.end_loss for model in list(self.smooth_Q)[idx:]])

    def update_and_evaluate(self, segment_swa, val_loss):
        if self.dead_valley:
            return
        frozen = copy.deepcopy(segment_swa)
        frozen.end_loss = val_loss
        self.converge_Q.append(frozen)
        self.smooth_Q.append(frozen)
        if self.converge_step is None:
            if len(self.converge_Q) < self.n_converge:
                return
            min_idx = np.argmin([model.end_loss for model in self.converge_Q])
            untilmin_segment_swa = self.converge_Q[min_idx]
            if min_idx == 0:
                self.converge_step = self.converge_Q[0].end_step
                self.final_model = Averaged(untilmin_segment_swa)
                th_base = np.mean([model.end_loss for model in self.converge_Q])
                self.threshold = th_base * (1.0 + self.tolerance_ratio)
                if self.n_tolerance < self.n_converge:
                    for i in range(self.n_converge - self.n_tolerance):
                        model = self.converge_Q[1 + i]
                        self.final_model.update_parameters(model, start_step=model.start_step, end_step=model.end_step)
                elif self.n_tolerance > self.n_converge:
                    converge_idx = self.n_tolerance - self.n_converge
                    Q = list(self.smooth_Q)[: converge_idx + 1]
                    start_idx = 0
                    for i in reversed(range(len(Q))):
                        model = Q[i]
                        if model.end_loss > self.threshold:
                            start_idx = i + 1
                            break
                    for model in Q[start_idx + 1:]:
                        self.final_model.update_parameters(model, start_step=model.start_step, end_step=model.end_step)
            return
        if self.smooth_Q[0].end_step < self.converge_step:
            return
        min_vloss = self.get_smooth_loss(0)
        if min_vloss > self.threshold:
            self.dead_valley = True
            return
        model = self.smooth_Q[0]
        self.final_model.update_parameters(model, start_step=model.start_step, end_step=model.end_step)

    def get_final_model(self):
        if self.converge_step is None:
            return self.converge_Q[-1]
        if not self.dead_valley:
            self.smooth_Q.popleft()
            while self.smooth_Q:
                smooth_loss = self.get_smooth_loss(0)
                if smooth_loss > self.threshold:
                    break
                segment_swa = self.smooth_Q.popleft()
                self.final_model.update_parameters(segment_swa, step=segment_swa.end_step)
        return self.final_model


def _losses(rng, n):
    """A noisy valley: falling, flat, rising (the shapes the rule is for), or pure noise."""
    kind = rng.choice(["valley", "noise", "falling", "rising"])
    t = np.arange(n)
    base = {"valley": (t - n * rng.uniform(0.2, 0.7)) ** 2 / n ** 2, "noise": 0 * t, "falling": 1 - t / n,
            "rising": t / n}[kind]
    return list(1.0 + base * rng.uniform(0.5, 3) + rng.uniform(0, 0.3) * np.array([rng.random() for _ in t]))


@pytest.mark.parametrize("n_converge, n_tolerance", [(3, 6), (3, 3), (4, 2), (1, 1), (2, 5)])
def test_the_window_equals_the_official_rule(n_converge, n_tolerance):
    rng = random.Random(n_converge * 10 + n_tolerance)
    for trial in range(60):
        n = rng.randint(1, 25)
        losses, weights = _losses(rng, n), [rng.uniform(-5, 5) for _ in range(n)]
        ratio = rng.choice([0.0, 0.05, 0.3, 2.0])
        official, ours = OfficialLossValley(n_converge, n_tolerance, ratio), LossValley(n_converge, n_tolerance, ratio)
        for i, (loss, w) in enumerate(zip(losses, weights)):
            official.update_and_evaluate(Seg(w, 10 * i + 1, 10 * i + 10), loss)
            ours.update(Segment({"w": torch.tensor(w, dtype=torch.float64)}, 10 * i + 1, 10 * i + 10, loss))
        assert ours.dead_valley == official.dead_valley and ours.converge_step == official.converge_step
        expected = official.get_final_model().w
        assert float(ours.result()["w"]) == pytest.approx(expected, abs=1e-5), (trial, losses, ratio)


@pytest.fixture(scope="module")
def setup():
    from clipood_kit.engine.builder import build_experiment
    from clipood_kit.engine.experiment import prepare
    return prepare(build_experiment(per_cell=4, steps=12, batch_size=8, lr=1e-3, cache_dir="off", method="swad",
                                    settings=["swad.every=3", "far_ood_sets="]))


def test_with_a_window_over_every_segment_swad_is_the_dense_mean_of_every_step(setup):
    """n_converge 1 converges at the first segment; an infinite tolerance never closes the valley: the average
    is the mean of the weights after each of the 12 steps."""
    from clipood_kit.engine.runs import run_method
    from clipood_kit.engine.settings import set_method_fields
    method = set_method_fields(setup.cfg.method, {"swad.n_converge": 1, "swad.n_tolerance": 1,
                                                  "swad.tolerance_ratio": 1e9})
    steps = []
    r = run_method(setup.for_method(method), progress=False,
                   on_step=lambda row, model, m: steps.append(model.trained_state()))
    assert len(steps) == 12
    swad = r["states"]["swad"]
    for key in ("visual.layer4.0.conv1.weight", "visual.attnpool.c_proj.weight"):
        dense = torch.stack([s[key].double() for s in steps]).mean(0)
        assert torch.allclose(swad[key].double(), dense, atol=1e-6), key
    losses = [row["validation_loss"] for row in r["history"] if "validation_loss" in row]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_a_stopped_and_resumed_swad_run_equals_the_uninterrupted_one(setup, tmp_path):
    from clipood_kit.engine.runs import run_method
    whole = run_method(setup, progress=False)
    run_method(setup, run_dir=tmp_path / "cut", stop_after=7, progress=False)
    resumed = run_method(setup, run_dir=tmp_path / "cut", resume=True, progress=False)
    for key, value in whole["states"]["swad"].items():
        assert torch.equal(resumed["states"]["swad"][key], value), key
    assert [r.get("validation_loss") for r in resumed["history"]] == [r.get("validation_loss") for r in whole["history"]]


def test_bad_settings_are_refused():
    from clipood_kit.engine.builder import build_experiment
    with pytest.raises(ValueError, match="swad.every must be an integer >= 1"):
        build_experiment(method="swad", settings=["swad.every=0"])
