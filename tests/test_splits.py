import pytest
import torch

from clipood_kit.data import WorldDataset, splits


@pytest.fixture(scope="module")
def data():
    return WorldDataset(per_cell=4, seed=0)


def test_domain_split_is_disjoint_and_complete(data):
    src, tgt = splits.domain_split(data.domain_ids, [2])
    assert set(src.tolist()).isdisjoint(tgt.tolist()) and len(src) + len(tgt) == len(data)
    assert set(data.domain_ids[tgt].tolist()) == {2} and 2 not in data.domain_ids[src].tolist()
    with pytest.raises(ValueError, match="out of range"):
        splits.domain_split(data.domain_ids, [9])
    with pytest.raises(ValueError, match="keep at least one source"):
        splits.domain_split(data.domain_ids, range(len(data.domains)))


def test_holdout_is_deterministic_disjoint_and_per_domain(data):
    a = splits.holdout_split(data.domain_ids, 0.25, seed=1)
    b = splits.holdout_split(data.domain_ids, 0.25, seed=1)
    c = splits.holdout_split(data.domain_ids, 0.25, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    kept, held = a
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == len(data)
    per_domain = torch.bincount(data.domain_ids[held])
    assert torch.all(per_domain == round(0.25 * len(data) / len(data.domains)))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        splits.holdout_split(data.domain_ids, 1.0, seed=0)


def test_base_new_halves_of_the_sorted_class_list(data):
    base, new = splits.base_new_classes(len(data.classes))
    assert base == list(range(13)) and new == list(range(13, 25))
    assert splits.base_new_classes(5) == ([0, 1, 2], [3, 4])
    idx = splits.select_classes(data.labels, new)
    assert set(data.labels[idx].tolist()) == set(new)


def test_k_shot_takes_k_per_class_deterministically(data):
    src, _ = splits.domain_split(data.domain_ids, [0])
    a = splits.k_shot(data.labels, 3, seed=0, indices=src)
    b = splits.k_shot(data.labels, 3, seed=0, indices=src)
    assert torch.equal(a, b) and set(a.tolist()) <= set(src.tolist())
    assert torch.all(torch.bincount(data.labels[a]) == 3)
    assert not torch.equal(a, splits.k_shot(data.labels, 3, seed=1, indices=src))
    with pytest.warns(UserWarning, match="fewer than 100"):
        splits.k_shot(data.labels, 100, seed=0)
