import pytest
import torch

from clipood_kit.data import world
from clipood_kit.data.datasets import WorldDataset


def test_same_seed_same_tensors_other_seed_other_images():
    a, b, c = world.sample(64, seed=3), world.sample(64, seed=3), world.sample(64, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.domains, b.domains) and a.captions() == b.captions()
    assert not torch.equal(a.images, c.images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (64, 3, 32, 32)


def test_world_has_enough_classes_and_styles_and_captions_name_them():
    cfg = world.WorldConfig()
    assert len(cfg.classes) >= 20 and len(cfg.styles) >= 4
    b = world.sample(200, seed=0)
    for i in range(len(b)):
        words = b.caption(i).split()
        assert words[-1] == cfg.classes[b.labels[i]]
        assert words[-2] == cfg.colours[b.colours[i]] and words[-3] == cfg.sizes[b.sizes[i]]
        assert " ".join(words[1:-5]) == world.STYLES[cfg.styles[b.domains[i]]]


def test_grid_is_balanced_and_restricted_sampling_obeys():
    g = world.grid(2, seed=1)
    cfg = g.config
    counts = torch.zeros(len(cfg.styles), len(cfg.classes))
    counts.index_put_((g.domains, g.labels), torch.ones(len(g)), accumulate=True)
    assert torch.all(counts == 2)
    r = world.sample(300, seed=2, classes=[1, 5], domains=[3], colours=[0])
    assert set(r.labels.tolist()) == {1, 5} and set(r.domains.tolist()) == {3} and set(r.colours.tolist()) == {0}


def test_styles_look_different_and_shapes_are_drawn():
    g = world.grid(30, seed=2)
    per_style = [g.images[g.domains == d].float() for d in range(len(g.config.styles))]
    means = torch.stack([x.mean() for x in per_style])
    assert means.max() - means.min() > 30          # neon is dark, sketch is bright
    # the shape varies the image: same class, same style images differ from other classes on average
    x = g.images.float().mean(1).flatten(1)
    centre = x[:, 12 * 32 + 12]
    assert centre.std() > 5


def test_bad_world_config_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match="unknown world class"):
        world.WorldConfig(classes=("star", "unicorn"))


def test_vocabulary_is_the_tokenizer_vocabulary():
    from clipood_kit.models.loader import tiny_tokenizer
    assert tiny_tokenizer().vocabulary == world.vocabulary()


def test_world_dataset_items():
    d = WorldDataset(per_cell=1, seed=0)
    img, y, dom = d[7]
    assert img.shape == (3, 32, 32) and y == 7 and dom == 0
    assert len(d) == len(d.classes) * len(d.domains)


def test_families_partition_the_classes_and_their_words_are_in_the_vocabulary():
    members = [c for fam in world.FAMILIES.values() for c in fam]
    assert sorted(members) == sorted(world.SHAPES)          # every class in exactly one family
    assert 24 <= len(members) <= 40 and len(world.FAMILIES) >= 4
    assert set(world.FAMILIES) <= set(world.vocabulary())


def test_taxonomy_split_alternates_sorted_members_so_every_family_is_on_both_sides():
    classes = world.WorldConfig().classes
    base, new = world.base_new_split(classes)
    assert sorted(base + new) == list(range(len(classes))) and not set(base) & set(new)
    for fam, members in world.FAMILIES.items():
        ordered = sorted(members)
        expected_base = {c for k, c in enumerate(ordered) if k % 2 == 0}
        assert {classes[i] for i in base if classes[i] in members} == expected_base, fam
        assert {classes[i] for i in new if classes[i] in members} == set(ordered) - expected_base, fam
    assert len(base) == sum((len(m) + 1) // 2 for m in world.FAMILIES.values())
    # the world dataset uses this rule; folder datasets keep the sorted halves
    assert WorldDataset(per_cell=1, seed=0).base_new_split() == (base, new)
    with pytest.raises(ValueError, match="no world family"):
        world.base_new_split(["star", "unicorn"])


def test_folder_datasets_keep_the_sorted_halves(world_tree):
    from clipood_kit.data import FolderDataset
    from clipood_kit.data.splits import base_new_classes
    d = FolderDataset(world_tree)
    assert d.families is None and d.base_new_split() == base_new_classes(len(d.classes))
