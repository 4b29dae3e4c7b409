"""Post-hoc ensembles from a trajectory equal the running averages kept during training, and the fast scorer
equals the standard evaluation."""
import math

import pytest
import torch

from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.methods import BetaMovingAverage, ExponentialMovingAverage, compose, interpolate, with_average
from clipood_kit.engine.posthoc import Trajectory
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import StateScorer, evaluate_state
from clipood_kit.engine.training import TrainConfig


def random_walk(module, steps, seed):
    """States of `module` along a random walk (a stand-in for a training run), t = 0..steps."""
    gen = torch.Generator().manual_seed(seed)
    states = [{k: v.clone() for k, v in module.state_dict().items()}]
    for _ in range(steps):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        states.append({k: v.clone() for k, v in module.state_dict().items()})
    return states


def trajectory_of(module, states, every=1):
    names = [n for n, _ in module.named_parameters()]
    traj = Trajectory(len(states) - 1, every).start(states[0], names)
    record = traj.recorder()
    for t, state in enumerate(states[1:], start=1):
        module.load_state_dict(state)
        record({"step": t}, module, None)
    return traj


@pytest.mark.parametrize("shape, steps, alpha, beta", [((5, 3), 10, 0.5, 0.5), ((7,), 25, 0.1, 0.1),
                                                       ((4, 4, 2), 16, 2.0, 0.5), ((3, 6), 9, 0.3, 3.0)])
def test_bma_from_a_trajectory_equals_the_running_average(shape, steps, alpha, beta):
    module = torch.nn.Sequential(torch.nn.Linear(shape[-1], 4), torch.nn.BatchNorm1d(4))
    torch.nn.init.normal_(module[0].weight)
    states = random_walk(module, steps, seed=steps)
    module.load_state_dict(states[0])
    running = BetaMovingAverage(module, steps, alpha, beta)
    ema = ExponentialMovingAverage(module, 0.9)
    for state in states[1:]:
        module.load_state_dict(state)
        running.update(module)
        ema.update(module)
    traj = trajectory_of(module, states)
    for got, want in ((traj.bma(alpha, beta), with_average(states[-1], running.average)),
                      (traj.ema(0.9), with_average(states[-1], ema.average)),
                      (traj.wise(0.3), interpolate(states[0], states[-1], 0.3))):
        assert got.keys() == want.keys()
        for k in want:
            assert torch.allclose(got[k].float(), want[k].float(), atol=1e-6), k


def test_snapshots_every_k_steps_approximate_the_exact_average():
    module = torch.nn.Linear(8, 8)
    states = random_walk(module, 60, seed=3)
    exact = trajectory_of(module, states).bma(0.5, 0.5)
    errors = {}
    for every in (1, 5, 20):
        approx = trajectory_of(module, states, every).bma(0.5, 0.5)
        errors[every] = max((approx[k] - exact[k]).abs().max().item() for k in exact)
    assert errors[1] < 1e-6 and errors[1] < errors[5] < errors[20]
    assert errors[5] < 0.1 * math.sqrt(5)          # a random walk's drift over half an interval, roughly


def test_a_run_s_trajectory_gives_its_bma_and_the_fast_scorer_equals_evaluation():
    setup = prepare(ExperimentConfig(per_cell=3))
    train = TrainConfig(steps=6, batch_size=8, lr=1e-4, seed=2)
    method = compose("clipood")
    names = [f"visual.{n}" for n, _ in setup.zero_shot.loaded.model.visual.named_parameters()]
    traj = Trajectory(train.steps).start(setup.zero_shot.state, names)
    r = run_method(setup.for_method(method, train), progress=False, on_step=traj.recorder())
    for k, v in r["states"]["bma"].items():
        assert torch.allclose(traj.bma(0.5, 0.5)[k].float(), v.float(), atol=1e-6), k
    assert traj.nbytes == 7 * 4 * sum(p.numel() for p in setup.zero_shot.loaded.model.visual.parameters())
    scorer = StateScorer(setup)
    fast, slow = scorer(r["states"]["bma"]), evaluate_state(setup, r["states"]["bma"])
    for group in ("train", "unseen"):
        for cell, value in slow["accuracy"][group].items():
            assert fast["accuracy"][group][cell] == pytest.approx(value, abs=1e-4)
    assert fast["ood"]["semantic"]["MCM"]["AUROC"] == pytest.approx(slow["ood"]["semantic"]["MCM"]["AUROC"], abs=1e-3)
    with pytest.raises(ValueError, match="incomplete"):
        Trajectory(5).start(setup.zero_shot.state, names).bma(0.5, 0.5)


def test_the_bma_grid_keeps_every_pair_s_exact_average():
    from clipood_kit.engine.settings import set_method_fields
    setup = prepare(ExperimentConfig(per_cell=3))
    train = TrainConfig(steps=5, batch_size=8, lr=1e-4, seed=4)
    names = [f"visual.{n}" for n, _ in setup.zero_shot.loaded.model.visual.named_parameters()]
    traj = Trajectory(train.steps).start(setup.zero_shot.state, names)
    method = set_method_fields(compose("clipood-grid"), {"bma-grid.alphas": (0.5, 2.0), "bma-grid.betas": (0.1,)})
    r = run_method(setup.for_method(method, train), progress=False, on_step=traj.recorder())
    assert r["primary"] == "bma@0.5,0.1" and set(r["models"]) == {"last", "bma@0.5,0.1", "bma@2,0.1"}
    for (a, b), name in (((0.5, 0.1), "bma@0.5,0.1"), ((2.0, 0.1), "bma@2,0.1")):
        for k, v in r["states"][name].items():
            assert torch.allclose(traj.bma(a, b)[k].float(), v.float(), atol=1e-6), (name, k)
