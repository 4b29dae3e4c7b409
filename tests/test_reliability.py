"""Bad inputs and faults: a clear one-line error and nothing left behind, never a result that looks right."""
import math
import os
import stat
import subprocess
import sys

import pytest
import torch

from clipood_kit.engine.experiment import ExperimentConfig
from clipood_kit.methods import MMSConfig, class_margins, compose, mms_loss
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.training import NonFiniteLossError, TrainConfig
from cli_in_process import run_cli


@pytest.fixture(scope="module")
def setup(prepared_world):
    return prepared_world(ExperimentConfig(per_cell=2))


@pytest.mark.parametrize("lr", [math.inf, math.nan, -1e-4, 0.0])
def test_a_non_finite_or_non_positive_lr_is_refused(lr):
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        TrainConfig(lr=lr).validate()


@pytest.mark.parametrize("lam", [math.inf, math.nan, -0.1])
def test_a_non_finite_or_negative_lambda_is_refused(lam):
    with pytest.raises(ValueError, match="margin_lambda must be finite"):
        class_margins(torch.eye(3), lam)
    with pytest.raises(ValueError, match="margin_lambda must be finite"):
        MMSConfig(margin_lambda=lam).validate()


def test_mms_loss_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        mms_loss(torch.zeros(0, 4), torch.eye(4), torch.zeros(0, dtype=torch.long), 0.3, 100.0)


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_writes_nothing(setup, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step \d+: the loss is nan .*lower --lr"):
        run_method(setup.for_method(compose("clipood"), TrainConfig(steps=6, batch_size=8, lr=1e30)), run_dir=run,
                   progress=False)
    assert not (run / "results.json").exists()
    assert not list(run.glob("*.safetensors"))


def test_cli_diverging_lr_is_one_line_exit_2_and_no_results(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_cli(["finetune", "--method", "ce", "--per-cell", "2", "--steps", "6", "--batch-size", "8", "--lr",
                    "1e30", "--out", str(out)], capsys)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if "it/s" not in line and "%|" not in line]
    assert lines[-1].startswith("clipood-kit finetune: error: step") and "not finite" in lines[-1]
    assert "Traceback" not in proc.stderr and not (out / "results.json").exists()


def test_cli_refuses_an_infinite_lambda_before_printing_the_config(tmp_path, capsys):
    proc = run_cli(["finetune", "--set", "mms.margin_lambda=inf", "--out", str(tmp_path / "run")], capsys)
    assert proc.returncode == 2 and proc.stdout == "" and "mms.margin_lambda=inf: expected a finite float" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_exported_world_is_readable_by_others(tmp_path):
    from clipood_kit.data import export_world
    old = os.umask(0o022)
    try:
        root = export_world(tmp_path / "w", per_cell=1, seed=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


def test_identical_weights_give_identical_safetensors_bytes_across_processes(tmp_path):
    """safetensors orders metadata by a hash map (random per process); ours are byte-identical and load back."""
    script = ("import sys, torch; from clipood_kit.core.io import save_weights; "
              "save_weights(sys.argv[1], {'b': torch.arange(4.0), 'a': torch.eye(2, dtype=torch.float64)}, "
              "metadata={'architecture': 'x', 'method': 'ce', 'model': 'last', 'seed': '0'})")
    paths = [tmp_path / f"w{i}.safetensors" for i in range(4)]
    for p in paths:
        subprocess.run([sys.executable, "-c", script, str(p)], check=True)
    assert len({p.read_bytes() for p in paths}) == 1
    from safetensors import safe_open
    from clipood_kit.core.io import load_weights
    state = load_weights(paths[0])
    assert torch.equal(state["b"], torch.arange(4.0)) and torch.equal(state["a"], torch.eye(2, dtype=torch.float64))
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == {"architecture": "x", "method": "ce", "model": "last", "seed": "0"}
