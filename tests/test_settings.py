"""`--set KEY=VALUE` and method composition: every field reachable, typed, validated with a named error."""
import pytest

from clipood_kit.engine.experiment import ExperimentConfig
from clipood_kit.methods import METHODS, compose, method_from_dict
from clipood_kit.engine.settings import apply_settings


def test_settings_reach_parts_training_and_experiment_fields_with_their_types():
    exp = apply_settings(ExperimentConfig(method=compose("car-ft-clipood")),
                         ["mms.margin_lambda=0.1", "bma.alpha=0.25", "context-kl.weight=2", "train.lr=3e-6",
                          "train.batch_per_domain=12", "per_cell=7", "templates=a photo of a {}.", "fpr_rule=nearest",
                          "shots=none"])
    assert exp.method.part("mms").margin_lambda == 0.1 and exp.method.part("bma").alpha == 0.25
    assert exp.method.part("context-kl").weight == 2.0 and isinstance(exp.method.part("context-kl").weight, float)
    assert exp.train.lr == 3e-6 and exp.train.batch_per_domain == 12 and exp.per_cell == 7 and exp.shots is None
    assert exp.templates == ["a photo of a {}."] and exp.fpr_rule == "nearest"
    wise = apply_settings(ExperimentConfig(method=compose("wise-ft")), ["wise-ft.mixes=0,0.5,1", "wise-ft.mix=1"])
    assert wise.method.part("wise-ft").mixes == (0.0, 0.5, 1.0)


@pytest.mark.parametrize("item, message", [
    ("mms.margin_lambda", "write KEY=VALUE"),
    ("mms.margin_lambda=abc", "mms.margin_lambda=abc: expected a finite float"),
    ("mms.margin_lambda=nan", "expected a finite float"),
    ("mms.margin_lambda=-1", "margin_lambda must be finite and >= 0"),
    ("mms.lam=0.1", "part 'mms' has no field 'lam'; its fields are \\['margin_lambda'\\]"),
    ("ema.decay=0.9", "method 'clipood' has no part 'ema'; its parts are mms \\+ bma"),
    ("bma.alpha=0", "bma.alpha must be finite and > 0"),
    ("train.lr=inf", "expected a finite float"),
    ("train.steps=1.5", "expected a finite int"),
    ("train.stepz=3", "the training config has no field 'stepz'"),
    ("train.precision=fp8", "precision must be 'no', 'bf16' or 'fp16'"),
    ("colour=red", "unknown key; use train.FIELD, PART.FIELD"),
    ("fpr_rule=sklearn", "fpr_rule must be one of"),
])
def test_bad_settings_name_the_field_and_what_is_allowed(item, message):
    with pytest.raises(ValueError, match=message):
        apply_settings(ExperimentConfig(), [item])


def test_any_combination_of_parts_is_a_configuration():
    m = compose("mms+context-kl+ema")
    assert m.describe() == "mms + context-kl + ema" and m.averager.kind == "ema"
    assert method_from_dict(m.to_dict()) == m
    for name, preset in METHODS.items():
        assert method_from_dict(preset.to_dict()) == preset
    for spec, message in (("mms+ce", "exactly one loss"), ("bma+ema+ce", "at most one averager"),
                          ("sgd", "unknown method 'sgd'"), ("mms+warp", "unknown method 'mms\\+warp'")):
        with pytest.raises(ValueError, match=message):
            compose(spec)
