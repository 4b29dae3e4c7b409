"""Tip-Adapter and Tip-Adapter-F (issue 18): the cache logits against a transcription of the official rule
(gaopengcuhk/Tip-Adapter `main.py` lines 32-42 and 91-94), the training-free run, and the trained keys."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipood_kit.methods.tip_adapter import CacheModel
from clipood_kit.models.adapted import AdaptedCLIP


def official_tip_logits(test_features, cache_keys, cache_values, clip_weights, alpha, beta):
    """main.py, numpy: clip_logits = 100. * f @ W (W is D x C there); affinity = f @ cache_keys (D x N there);
    cache_logits = exp(-(beta - beta * affinity)) @ cache_values; tip_logits = clip_logits + cache_logits * alpha."""
    clip_logits = 100.0 * test_features @ clip_weights
    affinity = test_features @ cache_keys
    cache_logits = np.exp((-1) * (beta - beta * affinity)) @ cache_values
    return clip_logits + cache_logits * alpha


def test_the_cache_scores_equal_the_official_rule():
    g = torch.Generator().manual_seed(0)
    n, m, c, d = 7, 12, 5, 16
    f = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    keys = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(c - 1, (m,), generator=g)                 # the last class is never trained on
    values = F.one_hot(labels, c).double()
    w = F.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=-1)
    cache = CacheModel(keys, values, alpha=1.17, beta=5.5, logit_scale=100.0).double()
    model = AdaptedCLIP(torch.nn.Identity(), w, parts={"tip-adapter": cache})
    ours = 100.0 * model.cosines(f, w)
    expected = official_tip_logits(f.numpy(), keys.numpy().T, values.numpy(), w.numpy().T, 1.17, 5.5)
    assert np.allclose(ours.numpy(), expected, atol=1e-10)
    assert torch.allclose(ours[:, -1], 100.0 * f @ w[-1])            # no cache term for an untrained class
    assert model.adapts_cosines and not model.classifier_is_frozen
    # the model's own scale replaces CLIP's 100: scores stay tip_logits / scale
    cache50 = CacheModel(keys, values, alpha=1.17, beta=5.5, logit_scale=50.0).double()
    ours50 = AdaptedCLIP(torch.nn.Identity(), w, parts={"tip-adapter": cache50}).cosines(f, w)
    alpha_cache = expected - 100.0 * (f @ w.T).numpy()                # the official alpha * cache_logits
    assert np.allclose((50.0 * ours50).numpy(), 50.0 * (f @ w.T).numpy() + alpha_cache, atol=1e-10)


@pytest.fixture(scope="module")
def setup(prepared_world):
    from clipood_kit.engine.builder import build_experiment
    return prepared_world(build_experiment("tiny-world", per_cell=6, shots=2, steps=6, batch_size=8, lr=1e-3,
                                    cache_dir="off", settings=["far_ood_sets="]))


def test_training_free_tip_adapter_builds_its_cache_and_trains_nothing(setup):
    from clipood_kit.engine.encoding import encode
    from clipood_kit.engine.runs import run_method
    from clipood_kit.engine.scoring import zero_shot_scores
    from clipood_kit.methods import compose
    r = run_method(setup.for_method(compose("tip-adapter")), progress=False)
    assert r["history"] == [] and r["primary"] == "last"
    assert r["train_config"] is None and "trains nothing" in r["notes"][0]      # not recorded as applied
    state = r["states"]["last"]
    train = encode(setup, setup.zero_shot.state, indices=setup.split.train_idx)
    assert torch.allclose(state["parts.tip-adapter.keys"], F.normalize(train["features"], dim=-1), atol=1e-6)
    assert torch.equal(state["parts.tip-adapter.values"].argmax(1), train["labels"])
    assert not any(k.startswith("visual.") for k in state)           # the towers are frozen
    zs, tip = zero_shot_scores(setup), r["models"]["last"]
    # new classes have no cache entries: classified among the new classes, nothing moves
    assert tip["accuracy"]["train"]["new"] == zs["accuracy"]["train"]["new"]
    from clipood_kit.engine.encoding import state_cosines
    f = encode(setup, setup.zero_shot.state)["features"]
    before, after = f @ setup.zero_shot.text_features.T, state_cosines(setup, state, f)
    assert torch.allclose(after[:, setup.split.new_ids], before[:, setup.split.new_ids], atol=1e-6)
    assert (after[:, setup.split.base_ids] > before[:, setup.split.base_ids]).all()       # the cache only adds (exp > 0)


def test_tip_adapter_f_trains_its_keys_from_the_cache(setup):
    from clipood_kit.engine.runs import run_method
    from clipood_kit.methods import compose
    free = run_method(setup.for_method(compose("tip-adapter")), progress=False)["states"]["last"]
    r = run_method(setup.for_method(compose("tip-adapter-f")), progress=False)
    tuned = r["states"]["last"]
    assert len(r["history"]) == 6 and all(np.isfinite(row["loss"]) for row in r["history"])
    assert tuned["parts.tip-adapter.keys"].shape == free["parts.tip-adapter.keys"].shape
    assert not torch.allclose(tuned["parts.tip-adapter.keys"], free["parts.tip-adapter.keys"])
    assert torch.equal(tuned["parts.tip-adapter.values"], free["parts.tip-adapter.values"])
    assert r["trains"] == ["parts.tip-adapter"]


def test_bad_settings_are_refused():
    from clipood_kit.engine.builder import build_experiment
    with pytest.raises(ValueError, match="tip-adapter.beta must be finite"):
        build_experiment("tiny-world", method="tip-adapter", settings=["tip-adapter.beta=-1"])
