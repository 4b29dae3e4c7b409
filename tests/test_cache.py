"""The feature cache: a hit returns identical tensors, every key part misses when it changes, a damaged entry is
rebuilt with a warning, concurrent writers leave one whole entry."""
import multiprocessing
from dataclasses import replace

import pytest
import torch

from clipood_kit.core.cache import FeatureCache
from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.engine.encoding import encode


def entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")


def test_zero_shot_features_and_text_classifiers_are_cached_and_reused(tmp_path):
    exp = ExperimentConfig(per_cell=2, cache_dir=str(tmp_path))
    setup = prepare(exp)
    first = encode(setup, setup.zero_shot.state)
    assert setup.cache.misses == 2 and setup.cache.hits == 0          # text classifier and images
    again = prepare(exp)                                                # another method, seed or command
    second = encode(again, again.zero_shot.state)
    assert again.cache.hits == 2 and again.cache.misses == 0
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(setup.zero_shot.text_features, again.zero_shot.text_features)
    fresh = prepare(replace(exp, cache_dir="off"))
    uncached = encode(fresh, fresh.zero_shot.state)
    assert all(torch.equal(first[k], uncached[k]) for k in first)      # the cache changes no number
    encode(setup, dict(setup.zero_shot.state))                           # another state object is never cached
    assert setup.cache.misses == 2 and setup.cache.hits == 0


@pytest.mark.parametrize("change", ["per_cell", "data_seed", "split_seed", "templates", "weights", "transform"])
def test_changing_any_key_part_misses(tmp_path, change):
    exp = ExperimentConfig(per_cell=2, cache_dir=str(tmp_path / "cache"))
    setup = prepare(exp)
    encode(setup, setup.zero_shot.state)
    before = entries(tmp_path / "cache")
    if change == "weights":
        from clipood_kit.core.io import save_weights
        state = {k: v.clone() for k, v in setup.zero_shot.loaded.model.state_dict().items()}
        state["visual.attnpool.c_proj.bias"] = state["visual.attnpool.c_proj.bias"] + 0.01
        save_weights(tmp_path / "other.safetensors", state)
        other = replace(exp, pretrained=str(tmp_path / "other.safetensors"))
    elif change == "templates":
        other = replace(exp, templates=["a photo of a {}."])
    elif change == "transform":
        other = exp
    else:
        other = replace(exp, **{change: getattr(exp, change) + 1})
    setup2 = prepare(other)
    if change == "transform":
        import torchvision.transforms.v2 as T
        setup2.zero_shot.loaded.preprocess = T.Compose([setup2.zero_shot.loaded.preprocess, T.Identity()])
    encode(setup2, setup2.zero_shot.state)
    new = set(entries(tmp_path / "cache")) - set(before)
    expected = {"templates": {"text"}, "weights": {"text", "zero-shot-images"},
                "transform": {"zero-shot-images"}}.get(change, {"zero-shot-images"})
    assert {n.rsplit("-", 1)[0] for n in new} == expected, new


def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path):
    cache = FeatureCache(tmp_path)
    key = {"a": 1}
    value = cache.get("x", key, lambda: {"t": torch.arange(5.0)})
    cache.path("x", key).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged .* rebuilding it"):
        again = cache.get("x", key, lambda: {"t": torch.arange(5.0)})
    assert torch.equal(again["t"], value["t"]) and torch.equal(cache.get("x", key, lambda: {})["t"], value["t"])


def _write(args):
    root, i = args
    return FeatureCache(root).get("y", {"k": 1}, lambda: {"t": torch.full((200_000,), 3.0)})["t"].sum().item()


def test_concurrent_writers_leave_one_whole_entry(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        sums = pool.map(_write, [(str(tmp_path), i) for i in range(8)])
    assert sums == [600_000.0] * 8
    assert entries(tmp_path) == [FeatureCache(tmp_path).path("y", {"k": 1}).name]
    assert FeatureCache(tmp_path).get("y", {"k": 1}, lambda: {})["t"].sum().item() == 600_000.0
