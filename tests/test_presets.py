"""The official CLIPood presets against the official scripts (thuml/CLIPood scripts.sh, as tabulated in
../shared/METHODS.md): batch, lr, epochs (x 500 iterations), lambda and Beta(b, b), per task and dataset."""
import pytest

from clipood_kit.engine.presets import PRESETS, get_preset

# task, dataset: (batch, lr, epochs, lambda, b); DomainBed batches are per source domain
OFFICIAL = {
    ("domain-shift", "pacs"): (12, 5e-6, 10, 0.3, 0.5), ("domain-shift", "vlcs"): (12, 5e-6, 10, 0.3, 0.5),
    ("domain-shift", "terraincognita"): (12, 5e-6, 10, 0.3, 0.5), ("domain-shift", "officehome"): (12, 1e-5, 10, 0.3, 0.5),
    ("domain-shift", "domainnet"): (12, 1e-5, 20, 0.3, 0.5),
    **{("base-to-new", d): (36, 5e-6, e, 0.3, 0.1) for d, e in {
        "imagenet": 10, "caltech101": 1, "oxfordpets": 1, "stanfordcars": 5, "oxfordflowers": 1, "food101": 1,
        "fgvcaircraft": 10, "sun397": 5, "dtd": 1, "eurosat": 1, "ucf101": 2}.items()},
    ("in-the-wild", "officehome"): (12, 3e-6, 10, 0.1, 0.1), ("in-the-wild", "domainnet"): (12, 5e-6, 20, 0.1, 0.5),
}


@pytest.mark.parametrize("task, dataset", sorted(OFFICIAL))
def test_official_presets_match_the_official_scripts(task, dataset):
    batch, lr, epochs, lam, b = OFFICIAL[(task, dataset)]
    exp = get_preset(f"clipood-{task}-{dataset}")
    assert exp.protocol == task and exp.model == "ViT-B-16" and exp.pretrained == "openai"
    assert exp.train.steps == epochs * 500 and exp.train.lr == lr and exp.train.weight_decay == 0.1
    if task == "base-to-new":
        assert exp.train.batch_size == batch and exp.train.batch_per_domain is None and exp.shots == 16
    else:
        assert exp.train.batch_per_domain == batch
    assert exp.method.describe() == "mms + bma" and exp.method.part("mms").margin_lambda == lam
    assert exp.method.part("bma").alpha == b == exp.method.part("bma").beta
    # base-to-new: CoOp's per-dataset template (converter_dassl.py CUSTOM_TEMPLATES, checked in test_layouts.py);
    # DomainBed: "a photo of a {}." (engine.py line 68); the dataset named for --data ROOT
    from clipood_kit.data.coop_layout import LAYOUTS
    template = LAYOUTS[dataset].template if task == "base-to-new" else "a photo of a {}."
    assert exp.templates == [template] and exp.holdout_fraction == 0.2 and exp.data == f"{dataset}:"


def test_every_clipood_preset_is_in_the_table_and_presets_are_copies():
    assert {n for n in PRESETS if n.startswith("clipood-")} == {f"clipood-{t}-{d}" for t, d in OFFICIAL}
    a = get_preset("clipood-domain-shift-pacs")
    a.train.lr = 1.0
    assert get_preset("clipood-domain-shift-pacs").train.lr == 5e-6
    with pytest.raises(ValueError, match="unknown preset 'domainbed-vitb16'"):
        get_preset("domainbed-vitb16")
