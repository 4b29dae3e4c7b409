"""The command line explains itself: every option of every command has help text that names its default."""
import argparse

from clipood_kit.cli import build_parser


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_has_help_that_names_its_default():
    missing = []
    for name, parser in _commands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action) if action.help else ""
            flag = action.option_strings[-1] if action.option_strings else action.dest
            if not text:
                missing.append(f"{name} {flag}: no help")
            elif action.option_strings and not action.required and not isinstance(action, argparse._StoreTrueAction) \
                    and "default" not in text:
                missing.append(f"{name} {flag}: no default named")
    assert not missing, missing


def test_the_preset_defaults_named_in_help_are_the_presets():
    from clipood_kit.engine.presets import get_preset
    exp = get_preset("tiny-world")
    helps = {a.option_strings[-1]: a.help for a in _commands()["finetune"]._actions if a.option_strings}
    assert helps["--steps"].endswith(f"tiny-world: {exp.train.steps})")
    assert helps["--lr"].endswith(f"tiny-world: {exp.train.lr})")
    assert helps["--per-cell"].endswith(f"tiny-world: {exp.per_cell})")


def test_compare_and_demo_take_the_model_data_and_template_flags_through_the_one_builder():
    from clipood_kit.cli import _bench_overrides, build_parser
    from clipood_kit.studies.bench import compare_bench
    args = build_parser().parse_args(["compare", "--model", "RN50", "--pretrained", "/w.pt", "--template", "a {}.",
                                      "--template", "a photo of a {}.", "--lr", "3e-5", "--set", "fpr_rule=nearest"])
    cfg = _bench_overrides(compare_bench((0,)), args)
    exp = cfg.experiment
    assert (exp.model, exp.pretrained, exp.templates, exp.train.lr, exp.fpr_rule) == (
        "RN50", "/w.pt", ["a {}.", "a photo of a {}."], 3e-5, "nearest")
