import json

import pytest
import torch
from safetensors.torch import load_file

from clipood_kit.engine.pretrain import PretrainConfig, captions, grouped_batch, logit_scale_at, pretrain
from clipood_kit.data import world


def test_pretraining_is_seeded_and_writes_weights_and_card(tmp_path):
    cfg = PretrainConfig(steps=3, groups=2, group_size=8, eval_per_cell=1, warmup_steps=1)
    pretrain(cfg, out=tmp_path / "a.safetensors", progress=False)
    pretrain(cfg, out=tmp_path / "b.safetensors", progress=False)
    wa, wb = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    card = json.loads((tmp_path / "a.card.json").read_text())
    assert card["config"]["steps"] == 3 and set(card["zeroshot_eval"]["accuracy"]) >= {"photo", "mean"}
    assert (tmp_path / "a.md").read_text().startswith("# Model card")
    # the weights moved away from the seeded initialisation
    torch.manual_seed(0)
    from clipood_kit.models import load_clip
    init = load_clip(pretrained=None).model.state_dict()
    assert not torch.equal(init["visual.conv1.weight"], wa["visual.conv1.weight"])


def test_captions_name_the_class_or_its_family():
    b = world.sample(400, seed=0)
    caps = captions(b, torch.Generator().manual_seed(0), family_share=0.2, sibling_share=0.0)
    last = [c.split()[-1] for c in caps]
    classes = [b.config.classes[y] for y in b.labels]
    assert all(w in (c, world.FAMILY_OF[c]) for w, c in zip(last, classes))
    family = sum(w == world.FAMILY_OF[c] for w, c in zip(last, classes)) / len(caps)
    assert 0.15 < family < 0.25
    assert len(set(len(c.split()) for c in caps)) > 2
    assert all(w == c for w, c in zip([x.split()[-1] for x in captions(b, torch.Generator(), 0.0, 0.0)], classes))
    # near misses: a sibling in the same family, never the class itself, every sibling used
    near = [x.split()[-1] for x in captions(b, torch.Generator().manual_seed(1), 0.0, 1.0)]
    assert all(w != c and world.FAMILY_OF[w] == world.FAMILY_OF[c] for w, c in zip(near, classes))
    assert set(near) == set(world.SHAPES)


def test_grouped_batches_share_style_and_colour_within_groups_and_differ_across():
    cfg = PretrainConfig(groups=6, group_size=10)
    b = grouped_batch(cfg, world.WorldConfig(), torch.Generator().manual_seed(1))
    assert len(b) == 60
    pairs = [(int(s), int(c)) for s, c in zip(b.domains, b.colours)]
    groups = [set(pairs[g * 10:(g + 1) * 10]) for g in range(6)]
    assert all(len(g) == 1 for g in groups)                      # one (style, colour) per group
    assert len(set.union(*groups)) == 6                          # distinct across groups
    assert len(set(b.labels.tolist())) > 10                      # shapes vary inside the groups
    with pytest.raises(ValueError, match="distinct"):
        grouped_batch(PretrainConfig(groups=41), world.WorldConfig(), torch.Generator())


def test_logit_scale_schedule_holds_ramps_log_linearly_and_holds():
    cfg = PretrainConfig(steps=100, scale_start=10.0, scale_end=100.0, scale_ramp=(0.5, 0.9))
    assert logit_scale_at(0, cfg) == pytest.approx(10.0) and logit_scale_at(50, cfg) == pytest.approx(10.0)
    assert logit_scale_at(70, cfg) == pytest.approx(10.0 ** 1.5)   # half-way in log space
    assert logit_scale_at(90, cfg) == pytest.approx(100.0) and logit_scale_at(99, cfg) == pytest.approx(100.0)


def test_rare_style_groups_are_rare_and_captioned_loosely_without_colour():
    cfg = PretrainConfig(groups=4, group_size=8, rare_style_share=0.25, rare_class_share=0.0, concept_share=0.0)
    from clipood_kit.engine.pretrain import pretraining_world
    wc = pretraining_world(cfg)
    assert wc.styles[-1] == "blueprint" and world.WorldConfig().styles == world.DEFAULT_STYLES
    gen = torch.Generator().manual_seed(0)
    rare = total = 0
    for _ in range(50):
        b = grouped_batch(cfg, wc, gen)
        styles = b.domains.view(cfg.groups, cfg.group_size)
        assert (styles == styles[:, :1]).all()                        # one style per group
        rare += int((styles[:, 0] == wc.styles.index("blueprint")).sum())
        total += cfg.groups
        caps = captions(b, torch.Generator().manual_seed(1), 0.0, 0.0, rare_class_share=0.0)
        for i, text in enumerate(caps):
            if wc.styles[b.domains[i]] == "blueprint":
                assert text.split()[-1] == world.FAMILY_OF[wc.classes[b.labels[i]]]      # never the class
                assert not set(text.split()) & set(world.COLOURS)                        # no colour named
    assert 0.15 < rare / total < 0.35


def test_held_out_concepts_appear_with_their_own_words():
    from clipood_kit.engine.pretrain import pretraining_batch, pretraining_world
    cfg = PretrainConfig(groups=4, group_size=16, concept_share=0.5, texture_share=0.5)
    wc = pretraining_world(cfg)
    images, texts = pretraining_batch(cfg, wc, torch.Generator().manual_seed(3))
    assert images.shape == (64, 3, wc.image_size, wc.image_size) and len(texts) == 64
    words = [set(t.split()) for t in texts]
    glyph = sum(bool(w & set(world.GLYPHS)) for w in words)
    pattern = sum(bool(w & set(world.PATTERNS)) for w in words)
    assert glyph > 0 and pattern > 0 and glyph + pattern < 64
    # every caption is made of the tiny CLIP's words
    assert set().union(*words) <= set(world.vocabulary())
    # the same generator state gives the same batch
    again = pretraining_batch(cfg, wc, torch.Generator().manual_seed(3))
    assert torch.equal(images, again[0]) and texts == again[1]


def test_without_the_new_options_the_batches_are_the_old_ones():
    """rare styles, glyphs and textures off: the batch stream of the earlier pretraining, draw for draw."""
    from clipood_kit.engine.pretrain import pretraining_batch
    cfg = PretrainConfig(groups=3, group_size=5, rare_style_share=0.0, concept_share=0.0, texture_share=0.0)
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    images, texts = pretraining_batch(cfg, world.WorldConfig(), gen_a)
    # the earlier recipe, inline: distinct (style, colour) pairs, then labels, sizes, render, captions
    pairs = len(world.DEFAULT_STYLES) * len(world.COLOURS)
    pair = torch.randperm(pairs, generator=gen_b)[:3].repeat_interleave(5)
    labels = torch.randint(25, (15,), generator=gen_b)
    sizes = torch.randint(3, (15,), generator=gen_b)
    styles, colours = pair // len(world.COLOURS), pair % len(world.COLOURS)
    old = world.render(labels, styles, colours, sizes, world.WorldConfig(), gen_b)
    assert torch.equal(images, old)


def test_the_shipped_weights_came_from_the_default_recipe():
    """`clipood-kit pretrain` with no options retrains the shipped model: the card's recipe is the defaults'."""
    from dataclasses import asdict
    from clipood_kit.engine.pretrain import tiny_weights_path
    card = json.loads(tiny_weights_path().with_suffix(".card.json").read_text())
    defaults = json.loads(json.dumps(asdict(PretrainConfig())))      # tuples as JSON lists, as in the card
    assert card["config"] == defaults
