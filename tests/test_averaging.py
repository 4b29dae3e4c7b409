import pytest
import torch
from scipy import stats

from clipood_kit import BetaMovingAverage, beta_weights
from clipood_kit.methods import ExponentialMovingAverage, interpolate, zero_shot_share


def test_beta_weights_are_the_beta_pdf_at_the_step_midpoints():
    T = 9
    w = beta_weights(T, 0.5, 0.5)
    assert len(w) == T + 1
    ref = [stats.beta.pdf((t + 0.5) / (T + 1), 0.5, 0.5) for t in range(T + 1)]
    assert w == pytest.approx(ref, rel=1e-10)
    assert w[0] > w[T // 2] < w[-1]                   # U shape: zero-shot and last steps weigh most
    assert beta_weights(4, 2.0, 5.0) == pytest.approx([stats.beta.pdf((t + .5) / 5, 2, 5) for t in range(5)])
    assert zero_shot_share([2.0, 1.0, 1.0]) == pytest.approx([1.0, 2 / 3, 0.5])


def _trajectory(steps, seed=0):
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    states = [{n: p.detach().clone() for n, p in module.named_parameters()}]
    return module, states


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.1, 0.1), (2.0, 0.7)])
def test_running_bma_equals_the_explicit_weighted_mean_of_the_trajectory(alpha, beta):
    T = 25
    module, states = _trajectory(T)
    bma = BetaMovingAverage(module, T, alpha, beta)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(T):
        (module(torch.randn(8, 4)) - 1).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        bma.update(module)
        states.append({n: p.detach().clone() for n, p in module.named_parameters()})
    w = torch.tensor(beta_weights(T, alpha, beta), dtype=torch.float64)
    for name in states[0]:
        stacked = torch.stack([s[name].double() for s in states])
        explicit = (w.view(-1, *[1] * (stacked.ndim - 1)) * stacked).sum(0) / w.sum()
        assert torch.allclose(bma.average[name].double(), explicit, atol=1e-6), name
    with pytest.raises(ValueError, match="update after the last step"):
        bma.update(module)


def test_alpha_beta_one_is_the_uniform_average_and_copy_to_loads_it():
    T = 6
    module, states = _trajectory(T, seed=1)
    bma = BetaMovingAverage(module, T, 1.0, 1.0)
    for t in range(T):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        bma.update(module)
        states.append({n: p.detach().clone() for n, p in module.named_parameters()})
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    bma.copy_to(target)
    for n, p in target.named_parameters():
        assert torch.allclose(p, torch.stack([s[n] for s in states]).mean(0), atol=1e-6)


def test_bma_keeps_fp32_for_a_bf16_module_and_round_trips_its_state():
    module = torch.nn.Linear(3, 2).to(torch.bfloat16)
    bma = BetaMovingAverage(module, 1000, 0.5, 0.5)
    with torch.no_grad():
        module.weight.add_(1.0)
    bma.update(module)
    assert all(t.dtype == torch.float32 for t in bma.average.values())
    again = BetaMovingAverage(module, 1000, 0.5, 0.5)
    again.load_state_dict(bma.state_dict())
    assert again.step == 1 and again.weight_sum == bma.weight_sum
    assert torch.equal(again.average["weight"], bma.average["weight"])
    with pytest.raises(ValueError, match="saved for total_steps=1000"):
        BetaMovingAverage(module, 10).load_state_dict(bma.state_dict())


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_steps=10, alpha=0.0, beta=1.0), "alpha must be a finite number > 0"),
    (dict(total_steps=10, alpha=1.0, beta=-2.0), "beta must be a finite number > 0"),
    (dict(total_steps=0, alpha=1.0, beta=1.0), "total_steps must be an integer >= 1"),
])
def test_invalid_bma_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BetaMovingAverage(torch.nn.Linear(2, 2), **kwargs)
    with pytest.raises(ValueError, match=match):
        beta_weights(**kwargs)


def test_wise_ft_endpoints_and_midpoint():
    a = {"w": torch.randn(3, 3), "n": torch.tensor(4)}
    b = {"w": torch.randn(3, 3), "n": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate(a, b, 0.5)["w"], (a["w"] + b["w"]) / 2)
    assert interpolate(a, b, 0.3)["n"] == 9
    with pytest.raises(ValueError, match=r"mix \(WiSE-FT alpha\) must be in \[0, 1\]"):
        interpolate(a, b, 1.2)


def test_ema_is_the_exponential_recursion():
    module = torch.nn.Linear(2, 1)
    w0 = module.weight.detach().clone()
    ema = ExponentialMovingAverage(module, 0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module)
    ema.update(module)
    assert torch.allclose(ema.average["weight"], 0.81 * w0 + 0.19)
    assert ema.zero_shot_share == pytest.approx(0.81)
