"""SWAD (methods/swad.py): the loss-valley window against a transcription of the official rule (khanrc/swad
`domainbed/swad.py` `LossValley`, lines 48-162, with `swa_utils.AveragedModel`), the dense mean over the window in
a real run, and a stopped and resumed run equal to an uninterrupted one."""
import copy
import random
from collections import deque

import numpy as np
import pytest
import torch

from clipood_kit.methods.swad import SWAD, LossValley, RunningMean, Segment, SWADConfig


class Averaged:
    """swa_utils.AveragedModel (lines 9-80) on one scalar weight: the constructor copies the model's weight and
    starts the count at 0 (line 26), so the first update overwrites it (lines 61-62)."""

    def __init__(self, model):
        self.w, self.n, self.start_step, self.end_step = model.w, 0, -1, -1

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


def test_the_held_until_minimum_segment_is_replaced_by_the_first_that_joins():
    """The case the official counting decides: converged at the first segment, one more joins; the official
    result is that segment alone (the held one had count 0), not the mean of both."""
    official, ours = OfficialLossValley(3, 3, 0.3), LossValley(3, 3, 0.3)
    for i, (loss, w) in enumerate([(1.0, 10.0), (1.1, 20.0), (1.2, 30.0), (1.15, 40.0)]):
        official.update_and_evaluate(Seg(w, i, i), loss)
        ours.update(Segment({"w": torch.tensor(w, dtype=torch.float64)}, i, i, loss))
    expected = official.get_final_model().w
    assert float(ours.result()["w"]) == pytest.approx(expected)
    assert expected != pytest.approx(15.0)           # the old rule (until-min counted once) gave (10 + 20) / 2


def test_an_early_convergence_joins_the_first_segments_more_than_once_as_the_official_rule():
    """Converged at the first of 12 flat segments, the valley step joins smooth_Q[0] while the queue fills: the
    official result counts segments 1 to 3 more than once; ours equals it, and the joins are counted apart."""
    official, ours = OfficialLossValley(3, 6, 0.3), LossValley(3, 6, 0.3)
    for i in range(12):
        loss, w = 1.0 + 0.001 * i, float(i)
        official.update_and_evaluate(Seg(w, i, i), loss)
        ours.update(Segment({"w": torch.tensor(w, dtype=torch.float64)}, i, i, loss))
    assert float(ours.result()["w"]) == pytest.approx(official.get_final_model().w)
    assert ours.final.count == official.final_model.n > len({tuple(j) for j in ours.final.joined}) == 12


def official_segments(n_steps, checkpoint_freq):
    """domainbed/trainer.py lines 161-257: every step updates the segment's AveragedModel (line 180; the first
    update overwrites the copy made at lines 153 and 257); `step % checkpoint_freq == 0` (line 182, step from 0)
    closes it. Returns the 1-based update numbers of each closed segment."""
    segments, current = [], []
    for step in range(n_steps):
        current.append(step + 1)
        if step % checkpoint_freq == 0:
            segments.append(current)
            current = []
    return segments


@pytest.mark.parametrize("steps, every", [(12, 3), (10, 3), (1, 5), (25, 10), (7, 1)])
def test_segments_close_where_the_official_trainer_evaluates(steps, every):
    """Segment boundaries after updates 1, F+1, 2F+1, ... and each segment the mean of its own steps' weights,
    on a model whose one weight after update s is s (so a segment's mean tells which steps it holds)."""
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    seen = []
    cfg = SWADConfig(every=every, n_converge=1, n_tolerance=1, tolerance_ratio=1e9)
    swad = SWAD(cfg)
    swad.valley = LossValley(1, 1, 1e9)
    swad.segment, swad.step, swad.losses = RunningMean(), 0, []
    swad.validation_loss = lambda model: float(len(seen))
    original = swad.valley.update
    swad.valley.update = lambda seg: (seen.append((seg.start_step, seg.end_step, float(seg.average["w"]))), original(seg))
    model = Model()
    for s in range(1, steps + 1):
        model.w.data.fill_(float(s))
        swad.after_step(model)
    expected = official_segments(steps, every)
    assert [(a, b) for a, b, _ in seen] == [(seg[0], seg[-1]) for seg in expected]
    assert [m for _, _, m in seen] == pytest.approx([float(np.mean(seg)) for seg in expected])
    assert cfg.segments(steps) == len(expected)


@pytest.fixture(scope="module")
def setup(prepared_world):
    from clipood_kit.engine.builder import build_experiment
    return prepared_world(build_experiment(per_cell=4, steps=12, batch_size=8, lr=1e-3, cache_dir="off", method="swad",
                                    settings=["swad.every=3", "far_ood_sets="]))


def test_with_a_window_over_every_segment_swad_is_the_dense_mean_of_every_step(setup):
    """n_converge 1 converges at the first segment (update 1), which is held with count 0 and replaced by the
    next; an infinite tolerance never closes the valley: the average is the dense mean of the weights after
    updates 2 to 10 (the segments closed after updates 4, 7, 10; updates 11 and 12 are in no closed segment, as
    in the official trainer). The run reports its open valley."""
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
        dense = torch.stack([s[key].double() for s in steps[1:10]]).mean(0)
        assert torch.allclose(swad[key].double(), dense, atol=1e-6), key
    losses = [row["validation_loss"] for row in r["history"] if "validation_loss" in row]
    assert len(losses) == 4 and all(np.isfinite(losses))
    report = r["method_report"]["swad"]
    assert report["converged"] and report["window"] == [2, 10] and report["segment_joins"] == 3
    assert report["distinct_segments"] == 3
    assert not report["dead_valley"] and "still open" in report["note"]
    assert any(n.startswith("swad: the loss valley was still open") for n in r["notes"])


def test_a_run_whose_loss_never_stops_falling_says_it_returns_the_last_segment(setup):
    """n_converge 4 on 4 segments: converged only if the first of them is the lowest; with the loss made to
    fall at every segment, 'swad' is the last segment and the report and notes say so."""
    from clipood_kit.engine.runs import run_method
    from clipood_kit.engine.settings import set_method_fields
    from clipood_kit.methods import swad as swad_module
    method = set_method_fields(setup.cfg.method, {"swad.n_converge": 4, "swad.n_tolerance": 4})
    falling = iter([4.0, 3.0, 2.0, 1.0])
    original = swad_module.SWAD.validation_loss
    swad_module.SWAD.validation_loss = lambda self, model: next(falling)
    try:
        r = run_method(setup.for_method(method), progress=False)
    finally:
        swad_module.SWAD.validation_loss = original
    report = r["method_report"]["swad"]
    assert not report["converged"] and report["averaged"] == "the last segment"
    assert "never stopped falling" in r["notes"][0]


def test_a_run_too_short_for_n_converge_segments_is_refused(setup):
    from clipood_kit.engine.runs import run_method
    from clipood_kit.engine.settings import set_method_fields
    method = set_method_fields(setup.cfg.method, {"swad.every": 6})      # 12 steps: segments after 1 and 7
    with pytest.raises(ValueError, match=r"needs n_converge=3 segments.*end only 2: set --set swad.every=5"):
        run_method(setup.for_method(method), progress=False)


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
