import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.methods import METHODS, compose
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.training import TrainConfig, global_batch

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def small():
    exp = ExperimentConfig(per_cell=4, method=compose("clipood"),
                           train=TrainConfig(steps=8, batch_size=8, lr=1e-4, seed=1))
    return exp, prepare(exp)


def test_a_run_moves_accuracy_and_the_bma_model_keeps_more_of_zero_shot():
    """Fine-tuning on the base classes of the training style forgets new classes in unseen styles; BMA forgets less.
    (The demo's task, data and budget: blueprint, 30 images per cell, 120 steps of batch 32.)"""
    from clipood_kit.engine.presets import demo_experiment
    from clipood_kit.engine.scoring import zero_shot_scores
    setup = prepare(demo_experiment())
    zs = zero_shot_scores(setup)["accuracy"]["unseen"]["new"]
    r = run_method(setup.for_method(compose("bma"), TrainConfig(steps=120, batch_size=32, lr=1e-4, seed=0)), progress=False)
    last, bma = (r["models"][m]["accuracy"]["unseen"]["new"] for m in ("last", "bma"))
    assert last < zs - 4, (zs, last)
    assert bma > last + 1, (last, bma)
    losses = [row["loss"] for row in r["history"]]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_history_has_the_bma_weight_and_zero_shot_share(small):
    exp, setup = small
    r = run_method(setup.for_method(exp.method, exp.train), progress=False)
    h = r["history"]
    assert [row["step"] for row in h] == list(range(1, 9))
    assert all({"loss", "lr", "average_weight", "zero_shot_share"} <= set(row) for row in h)
    shares = [row["zero_shot_share"] for row in h]
    assert all(a > b for a, b in zip(shares, shares[1:])) and 0 < shares[-1] < 1
    assert h[0]["lr"] == pytest.approx(1e-4) and h[-1]["lr"] < h[0]["lr"]
    assert set(r["models"]) == {"last", "bma"} and r["primary"] == "bma"


def test_batches_are_balanced_over_domains_and_seeded():
    pools = [torch.arange(0, 10), torch.arange(10, 30), torch.arange(30, 33)]
    b = global_batch(5, 0, pools, 9)
    assert b == global_batch(5, 0, pools, 9) and b != global_batch(6, 0, pools, 9)
    idx = torch.tensor([i for i, _ in b])
    assert [int(((idx >= p[0]) & (idx <= p[-1])).sum()) for p in pools] == [3, 3, 3]


def test_stopped_and_resumed_run_is_bit_identical(small, tmp_path):
    exp, setup = small
    full = run_method(setup.for_method(exp.method, exp.train), run_dir=tmp_path / "full", progress=False)
    part = run_method(setup.for_method(exp.method, exp.train), run_dir=tmp_path / "cut", stop_after=3, progress=False)
    assert not part["completed"] and (tmp_path / "cut" / "checkpoints" / "step_000003").is_dir()
    rest = run_method(setup.for_method(exp.method, exp.train), run_dir=tmp_path / "cut", resume=True, progress=False)
    for name in ("last", "bma"):
        for k, v in full["states"][name].items():
            assert torch.equal(v, rest["states"][name][k]), (name, k)
    assert full["history"] == rest["history"]
    saved = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert saved["primary"] == "bma" and "unseen" in saved["models"]["bma"]["accuracy"]
    assert (tmp_path / "cut" / "history.json").exists() and (tmp_path / "cut" / "model_bma.safetensors").exists()


KILL_SCRIPT = """
import os, signal, sys
from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.training import TrainConfig
exp = ExperimentConfig(per_cell=4, method="clipood",
                       train=TrainConfig(steps=8, batch_size=8, lr=1e-4, seed=1, checkpoint_every=2))
kill_at = int(sys.argv[2])
def on_step(row, encoder, method):
    if row["step"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
run_method(prepare(exp).for_method(exp.method, exp.train), run_dir=sys.argv[1], resume=True, progress=False, on_step=on_step)
"""


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Killed (SIGKILL) after step 5, resumed from the step-4 checkpoint: the result equals an uninterrupted run's
    to the bit. Both runs are fresh processes (a long-lived test worker's earlier work may change a float's last
    bit; the property is the resumed process's)."""
    full = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "full"), "0"], capture_output=True,
                          text=True)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), "5"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004"]
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed, uninterrupted = load_file(run / "model_bma.safetensors"), load_file(tmp_path / "full" / "model_bma.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), k


# Each method (and the sharded evaluation) runs once on one CPU process and once on two, every job of a count in one
# launch (tests/dist_worker.py): fresh processes, started twice instead of once per job and count.
DIST_JOBS = ("clipood", "lp-ft", "probe-ce", "ogen:no-dropout", "ogen-ft:no-dropout", "evaluate")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """{1: folder, 2: folder}: every `DIST_JOBS` job's files after a launch on that many processes."""
    folders = {}
    for n in (1, 2):
        folders[n] = tmp_path_factory.mktemp(f"processes{n}")
        proc = subprocess.run([sys.executable, str(HERE / "dist_worker.py"), str(n), str(folders[n]), *DIST_JOBS],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folders


def _launch(launched, n, job):
    return launched[n] / f"{job}.safetensors"


def test_two_processes_equal_one_process(launched):
    one, two = load_file(_launch(launched, 1, "clipood")), load_file(_launch(launched, 2, "clipood"))
    assert one.keys() == two.keys()
    bma_keys = [k for k in one if k.startswith("bma/")]
    assert bma_keys
    for k in bma_keys:
        assert torch.allclose(one[k], two[k], atol=1e-6, rtol=0), (k, (one[k] - two[k]).abs().max())
    assert torch.allclose(one["losses"], two["losses"], atol=1e-5)
    moved = max((one[k] - one[k.replace("bma/", "last/")]).abs().max().item() for k in bma_keys)
    assert moved > 0      # the run did train: BMA differs from the last step


def _assert_close(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())


@pytest.mark.parametrize("method", ["lp-ft", "probe-ce"])
def test_parts_with_modules_train_the_same_on_two_processes_as_on_one(launched, method):
    """A part's module in the model (LP-FT's head, prepared with the model) and a part's own training module
    (the toy probe, prepared on its own): DDP averages every gradient, nothing is averaged by hand, and two
    processes give one process's model, and the same own module on both ranks."""
    one, two = _launch(launched, 1, method), _launch(launched, 2, method)
    _assert_close(load_file(one), load_file(two))
    if method == "lp-ft":
        head = load_file(one)["last/parts.lp-ft.weight"]
        assert not torch.equal(head, load_file(one)["last/parts.lp-ft.weight"] * 0)
    else:
        ranks = [load_file(f"{two}.rank{r}") for r in (0, 1)]
        for k, v in ranks[0].items():
            assert torch.equal(v, ranks[1][k]), k
        _assert_close(load_file(f"{one}.rank0"), ranks[0])


@pytest.mark.parametrize("method", ["ogen", "ogen-ft"])
def test_ogen_trains_the_same_on_two_processes_as_on_one(launched, method):
    """OGEN beside a trained prompt context (ogen) or image tower (ogen-ft): its generator, prepared by Accelerate,
    is identical on every process, and two processes give one process's model and generator, because u is drawn
    for the global batch (`OGENGenerator.sample_features`). Without attention dropout: its masks are drawn per
    process (methods/ogen.py says so)."""
    one, two = _launch(launched, 1, f"{method}:no-dropout"), _launch(launched, 2, f"{method}:no-dropout")
    ranks = [load_file(f"{two}.rank{r}") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]), k
    _assert_close(load_file(f"{one}.rank0"), ranks[0])
    _assert_close(load_file(one), load_file(two))


def test_bad_train_config_is_refused(small):
    exp, setup = small
    with pytest.raises(ValueError, match="batch_size"):
        run_method(setup.for_method(exp.method, TrainConfig(steps=2, batch_size=0)), progress=False)
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        run_method(setup.for_method(compose("sgd"), exp.train), progress=False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_trains_three_steps_and_is_scored(small, name):
    """Smoke test of the registry: each method trains 3 steps (a training-free one none) and its models are scored
    (finite, in range)."""
    import math
    from clipood_kit.engine.settings import set_method_fields
    from clipood_kit.methods import Method
    exp, setup = small
    method = compose(name)
    if method.averager is not None and method.averager.kind == "swad":
        method = set_method_fields(method, {"swad.every": 1})        # 3 steps: one segment a step
    r = run_method(setup.for_method(method, TrainConfig(steps=3, batch_size=8, lr=1e-4, seed=2)), progress=False)
    steps = 0 if Method(method).training_free else 3
    assert r["completed"] and len(r["history"]) == steps and r["primary"] in r["models"]
    assert all(math.isfinite(row["loss"]) for row in r["history"])
    cells = r["models"][r["primary"]]["accuracy"]
    assert all(0 <= v <= 100 for row in cells.values() for v in row.values())
    assert {"new", "base"} <= set(r["headline"]["unseen"]) and {"new", "base"} <= set(r["headline"]["train"])
    assert r["method_config"] == method.to_dict()    # results record the parts the method used, only those


def test_evaluation_sharded_over_two_processes_equals_one_process(launched):
    """Each process encodes every 2nd image (a batch size of 7 leaves ragged shards); the gathered features,
    in order, and the scores equal one process's."""
    outs = {}
    for n in (1, 2):
        out = _launch(launched, n, "evaluate")
        outs[n] = (load_file(out), json.loads(Path(f"{out}.json").read_text()))
    (one, s1), (two, s2) = outs[1], outs[2]
    assert torch.equal(one["labels"], two["labels"]) and torch.equal(one["domains"], two["domains"])
    assert torch.allclose(one["features"], two["features"], atol=1e-6)
    assert s1["accuracy"] == s2["accuracy"]


def test_loader_workers_do_not_change_the_batches(small):
    """With 2 loader workers the run equals the run without: each image's augmentation has its own seed."""
    exp, setup = small
    base = TrainConfig(steps=3, batch_size=8, lr=1e-4, seed=6)
    r0 = run_method(setup.for_method(compose("ce"), replace(base, num_workers=0)), progress=False)
    r2 = run_method(setup.for_method(compose("ce"), replace(base, num_workers=2)), progress=False)
    for k, v in r0["states"]["last"].items():
        assert torch.equal(v, r2["states"]["last"][k]), k
    from clipood_kit.engine.training import loader_options
    assert loader_options(None, torch.device("cuda")) == {"num_workers": min(8, os.cpu_count()), "pin_memory": True,
                                                         "persistent_workers": True}
    assert loader_options(None, torch.device("cpu"))["num_workers"] == 0


def test_a_nan_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    out = tmp_path / "nan"
    proc = subprocess.run([sys.executable, str(HERE / "dist_worker.py"), "2", str(out), "diverge"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [Path(f"{out}.rank{r}").read_text() for r in (0, 1)] == ["step 2", "step 2"]


def test_the_experiments_device_reaches_the_accelerator(monkeypatch):
    """--device cpu trains on the CPU even where CUDA is available (the trainer once asked only whether CUDA
    existed)."""
    import torch
    from clipood_kit.engine.training import accelerator_settings
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accelerator_settings(torch.device("cpu"), "bf16") == {"cpu": True, "mixed_precision": "bf16",
                                                                  "kwargs_handlers": []}
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    assert accelerator_settings(torch.device("cuda:1"), "no") == {"cpu": False, "mixed_precision": "no",
                                                                   "kwargs_handlers": []}
    assert calls == [torch.device("cuda:1")]
