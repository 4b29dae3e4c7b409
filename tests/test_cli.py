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
