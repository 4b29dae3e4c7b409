"""Adding a method: one module (tests/toy_method.py) plus one registry line, then it runs end to end through the
API and the CLI, with its own settings."""
from dataclasses import replace
import json

import pytest
import torch

from clipood_kit import cli
from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.methods import METHODS, BMAConfig, MethodConfig, compose
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.settings import set_method_fields
from clipood_kit.engine.training import TrainConfig
from toy_method import FocalConfig


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "focal-bma", MethodConfig("focal-bma", FocalConfig(), averager=BMAConfig()))  # the line


def test_a_new_loss_is_one_module_and_one_registry_line(registered, tmp_path, capsys):
    assert cli.main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "focal-bma" in listed and "focal loss" in listed and "gamma=2.0" in listed
    out = tmp_path / "run"
    assert cli.main(["finetune", "--method", "focal-bma", "--set", "focal.gamma=1.5", "--per-cell", "3",
                     "--steps", "3", "--batch-size", "8", "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["method_config"]["loss"] == {"kind": "focal", "gamma": 1.5} and saved["primary"] == "bma"
    assert all("p_true" in row for row in json.loads((out / "history.json").read_text()))
    assert cli.main(["finetune", "--method", "focal-bma", "--set", "focal.gamma=-1", "--out", str(tmp_path / "x")]) == 2
    assert "focal.gamma must be >= 0" in capsys.readouterr().err


def test_focal_at_gamma_zero_trains_exactly_as_cross_entropy(registered):
    """In float64: AdamW turns float32 rounding in near-zero gradients into lr-sized steps (tests/dist_worker.py)."""
    setup = prepare(ExperimentConfig(per_cell=3))
    setup.zero_shot.loaded.model.double()
    setup.zero_shot = replace(setup.zero_shot, state={k: v.double() if v.is_floating_point() else v
                                                      for k, v in setup.zero_shot.state.items()})
    train = TrainConfig(steps=3, batch_size=8, lr=1e-4, seed=1)
    focal = run_method(setup.for_method(set_method_fields(compose("focal-bma"), {"focal.gamma": 0.0}), train), progress=False)
    ce = run_method(setup.for_method(compose("bma"), train), progress=False)
    for k, v in ce["states"]["bma"].items():
        assert torch.allclose(v, focal["states"]["bma"][k], atol=1e-9), k
    assert [r["loss"] for r in ce["history"]] == pytest.approx([r["loss"] for r in focal["history"]], abs=1e-12)
