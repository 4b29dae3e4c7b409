"""The reliability suite: bad inputs and faults as a hostile user makes them. Each case must end in a one-line
error naming the problem and the fix (exit 2, no traceback) and leave nothing behind; the faults that must not
end in an error (a resume without a checkpoint, --overwrite) are checked for the correct result."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_in_process import run_cli
from clipood_kit import cli
from clipood_kit.core.io import save_weights
from clipood_kit.models.loader import tiny_weights_path

FAST = ["--per-cell", "2", "--steps", "2", "--batch-size", "4"]


def make_tree(root: Path, layout: dict) -> Path:
    """A folder dataset from {domain: {class: number of images}} (8 x 8 PNGs)."""
    from PIL import Image
    for d, classes in layout.items():
        for c, n in classes.items():
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 40 % 255, 10, 200)).save(root / d / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    base = tmp_path_factory.mktemp("faults")
    f = {"plain_file": base / "plain.txt", "a_folder": base / "a-folder"}
    f["plain_file"].write_text("not a folder")
    f["a_folder"].mkdir()
    f["random_bytes"] = base / "random.safetensors"
    f["random_bytes"].write_bytes(os.urandom(4096))
    f["truncated"] = base / "truncated.safetensors"
    f["truncated"].write_bytes(tiny_weights_path().read_bytes()[:100_000])
    f["other_arch"] = base / "other.safetensors"
    save_weights(f["other_arch"], {"visual.conv1.weight": torch.zeros(3), "unrelated.weight": torch.zeros(2)})
    f["pickle_object"] = base / "object.pt"
    torch.save({"state": Path("x")}, f["pickle_object"])          # a pickled non-tensor object
    f["one_domain"] = make_tree(base / "one", {"photo": {"a": 2, "b": 2}})
    f["empty_domain"] = make_tree(base / "empty", {"photo": {"a": 2, "b": 2}})
    (f["empty_domain"] / "sketch").mkdir()
    f["class_mismatch"] = make_tree(base / "mismatch", {"photo": {"a": 2, "b": 2}, "sketch": {"a": 2, "c": 2}})
    tree = make_tree(base / "broken", {d: {c: 2 for c in ("heart", "moon", "ring", "star")}
                                       for d in ("neon", "photo", "sketch")})
    # the last domain is held out by default: a broken image there used to surface only after training
    (tree / "sketch" / "ring" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    f["broken_image"] = tree
    f["template"] = "a picture"
    return f


# id: (argv after the command, the error's expected words)
CASES = {
    "lr-inf": (["finetune", "--lr", "inf"], "lr must be finite and > 0"),
    "lr-nan": (["finetune", "--lr", "nan"], "lr must be finite and > 0"),
    "lr-negative": (["finetune", "--lr=-1e-4"], "lr must be finite and > 0"),
    "lr-zero": (["finetune", "--lr", "0"], "lr must be finite and > 0"),
    "lambda-inf": (["finetune", "--set", "mms.margin_lambda=inf"], "mms.margin_lambda=inf: expected a finite float"),
    "lambda-negative": (["finetune", "--set", "mms.margin_lambda=-0.1"], "margin_lambda must be finite and >= 0"),
    "bma-alpha-zero": (["finetune", "--set", "bma.alpha=0"], "bma.alpha must be finite and > 0"),
    "bma-beta-negative": (["finetune", "--set", "bma.beta=-1"], "bma.beta must be finite and > 0"),
    "steps-zero": (["finetune", "--steps", "0"], "steps must be >= 1"),
    "batch-zero": (["finetune", "--batch-size", "0"], "batch_size \\(0\\) must be a positive multiple"),
    "precision": (["finetune", "--set", "train.precision=fp8"], "precision must be 'no', 'bf16' or 'fp16'"),
    "method-unknown": (["finetune", "--method", "sgd"], "unknown method 'sgd'"),
    "method-two-losses": (["finetune", "--method", "mms+ce"], "exactly one loss"),
    "ogen-k-zero": (["finetune", "--method", "ogen", "--set", "ogen.k=0"], "ogen.k must be an integer >= 1"),
    "ema-decay-one": (["finetune", "--method", "ema", "--set", "ema.decay=1"], "ema.decay must be in \\[0, 1\\)"),
    "wise-mix-two": (["finetune", "--method", "wise-ft", "--set", "wise-ft.mix=2"], "wise-ft mixes must be in"),
    "set-unknown-field": (["finetune", "--set", "mms.lam=0.1"], "part 'mms' has no field 'lam'"),
    "set-absent-part": (["finetune", "--set", "ema.decay=0.9"], "has no part 'ema'; its parts are mms \\+ bma"),
    "set-no-equals": (["finetune", "--set", "mms.margin_lambda"], "write KEY=VALUE"),
    "set-bad-int": (["finetune", "--set", "train.steps=abc"], "train.steps=abc: expected a finite int"),
    "fpr-rule": (["finetune", "--set", "fpr_rule=sklearn"], "fpr_rule must be one of"),
    "target-unknown": (["finetune", "--target", "clay"], "target domain\\(s\\) \\['clay'\\] not in the dataset"),
    "target-every-domain": (["finetune"] + [a for d in ("photo", "sketch", "cartoon", "painting", "neon", "blueprint")
                                            for a in ("--target", d)], "no source domain to train on"),
    "source-unknown": (["finetune", "--source", "clay"], "source domain\\(s\\) \\['clay'\\] not in the dataset"),
    "source-with-base-to-new": (["finetune", "--protocol", "base-to-new", "--source", "painting"],
                                "base-to-new trains on every domain.*would be ignored: leave --source and --target out"),
    "ogen-without-new-classes": (["finetune", "--method", "ogen", "--protocol", "domain-shift"],
                                 "ogen needs held-out class names"),
    "data-missing": (["finetune", "--data", "/no/such/folder"], "dataset folder /no/such/folder does not exist"),
    "data-is-a-file": (["finetune", "--data", "{plain_file}"], "is a file, not a dataset folder"),
    "data-one-domain": (["finetune", "--data", "{one_domain}"],
                        "no source domain to train on.*trains under --protocol base-to-new"),
    "data-empty-domain": (["finetune", "--data", "{empty_domain}"], "domain 'sketch' in .* is empty"),
    "data-class-mismatch": (["finetune", "--data", "{class_mismatch}"], "class sets differ between domains"),
    "image-corrupt-held-out": (["finetune", "--data", "{broken_image}"], "1 unreadable image\\(s\\) in .*sketch/ring/1.png"),
    "weights-missing": (["finetune", "--pretrained", "/no/such.safetensors"], "neither a file nor a pretrained tag"),
    "weights-random-bytes": (["finetune", "--pretrained", "{random_bytes}"], "cannot load .*random.safetensors as "
                             "tiny-clip-world weights"),
    "weights-truncated": (["finetune", "--pretrained", "{truncated}"], "cannot load .*truncated.safetensors"),
    "weights-other-architecture": (["finetune", "--pretrained", "{other_arch}"],
                                   "another architecture's weights: \\d+ missing keys"),
    "weights-pickled-object": (["finetune", "--pretrained", "{pickle_object}"], "cannot load .*object.pt"),
    "weights-offline-tag": (["finetune", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
                            "are not cached and huggingface.co cannot be reached"),
    "model-unknown": (["finetune", "--model", "ViT-X-99"], "unknown architecture 'ViT-X-99'"),
    "out-is-a-file": (["finetune", "--out", "{plain_file}"], "is a file; give a folder for the run"),
    "out-under-a-file": (["finetune", "--out", "{plain_file}/run"], "is not writable; choose another --out"),
    "zeroshot-template": (["zeroshot", "--per-cell", "1", "--template", "{template}"], "lack the '\\{\\}' placeholder"),
    "zeroshot-data-missing": (["zeroshot", "--data", "/no/such/folder"], "does not exist"),
    "card-random-weights": (["clip-card", "--per-cell", "1", "--pretrained", "{random_bytes}"], "cannot load"),
    "export-onto-a-file": (["export-world", "{plain_file}", "--per-cell", "1"], "exists and is not empty|is a file"),
    # refused before training (it used to train for the whole run, then fail to move the weights onto the folder)
    "pretrain-out-is-a-folder": (["pretrain", "--steps", "2", "--out", "{a_folder}"],
                                 "is a folder; give the weights file to write"),
    "pretrain-out-under-a-file": (["pretrain", "--steps", "2", "--out", "{plain_file}/w.safetensors"],
                                  "plain.txt is a file; give a folder for the weights"),
}
if not torch.cuda.is_available():       # where a GPU is present, --device cuda is a valid choice
    CASES["device-cuda-without-gpu"] = (["finetune", "--device", "cuda"], "no CUDA device is available")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_is_one_line_and_leaves_nothing(case, files, tmp_path, capsys):
    argv, expected = CASES[case]
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    out_dir = tmp_path / "run"
    if argv[0] == "finetune":           # the case's own options come after FAST, so they win
        argv = [argv[0], *FAST, *argv[1:]] + ([] if "--out" in argv else ["--out", out_dir])
    start = time.perf_counter()
    code, out, err = run_cli(argv, capsys)
    seconds = time.perf_counter() - start
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipood-kit {argv[0]}: error: "), err
    import re
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in err and "fine-tune" not in out       # refused before any training
    assert not out_dir.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    if case == "weights-offline-tag":        # fails at once, not after open_clip's minute of retries (a loose bound:
        assert seconds < 20.0, seconds       # 4.5 s seen on 2 cores busy with a browser test)


# -- run folders: finished, stopped, resumed, overwritten, killed ------------------------------------------

def finetune(capsys, out, *extra):
    return run_cli(["finetune", *FAST, "--out", out, *extra], capsys)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished clipood run and a run stopped after step 1 of 3 (made once, copied per test)."""
    base = tmp_path_factory.mktemp("runs")
    finished, stopped = base / "finished", base / "stopped"
    for argv in (["--out", finished], ["--out", stopped, "--steps", "3", "--stop-after", "1"]):
        proc = subprocess.run([sys.executable, "-m", "clipood_kit.cli", "finetune", *FAST, *map(str, argv)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return {"finished": finished, "stopped": stopped}


def copy_of(runs, name, tmp_path) -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / name))


@pytest.mark.parametrize("name, extra, expected", [
    ("finished", [], "holds a finished run \\(results.json\\); pass --overwrite"),
    ("finished", ["--resume"], "holds a finished run \\(results.json\\); nothing to resume"),
    ("stopped", ["--steps", "3"], "holds checkpoints of a stopped run; pass --resume"),
    ("stopped", ["--steps", "3", "--resume", "--lr", "1e-3"], "differs from the checkpoint's in 1 field\\(s\\): "
                                                                "train.lr: 0.0001 -> 0.001"),
    ("stopped", ["--steps", "3", "--resume", "--seed", "7"], "experiment.split_seed: 0 -> 7; train.seed: 0 -> 7"),
    ("stopped", ["--steps", "3", "--resume", "--method", "ce"], "experiment.method.averager: .* experiment.method.name: 'clipood' -> 'ce'"),
    ("stopped", ["--steps", "3", "--resume", "--per-cell", "3"], "experiment.per_cell: 2 -> 3"),
    ("stopped", ["--steps", "4", "--resume"], "train.steps: 3 -> 4"),
])
def test_a_run_folder_is_never_mixed(runs, tmp_path, capsys, name, extra, expected):
    import re
    run = copy_of(runs, name, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, out, err = finetune(capsys, run, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(expected, err), err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before      # untouched


@pytest.mark.parametrize("damage, expected", [
    ("weights", "checkpoint .*step_000001 cannot be loaded"),
    ("empty-state", "checkpoint .*step_000001 is damaged \\(trainer_state.json"),
])
def test_a_damaged_checkpoint_is_one_line(runs, tmp_path, capsys, damage, expected):
    import re
    run = copy_of(runs, "stopped", tmp_path)
    ckpt = run / "checkpoints" / "step_000001"
    if damage == "weights":
        target = next(p for p in ckpt.iterdir() if p.suffix == ".safetensors" and p.name != "method_state.safetensors")
        target.write_bytes(os.urandom(1000))
    else:
        (ckpt / "trainer_state.json").write_text("")
    code, _, err = finetune(capsys, run, "--steps", "3", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(expected, err), err
    assert not (run / "results.json").exists()


def test_resume_without_a_checkpoint_says_so_and_trains_from_step_zero(tmp_path, capsys):
    code, out, err = finetune(capsys, tmp_path / "fresh", "--resume")
    assert code == 0, err
    assert f"--resume: no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}; training from step 0" in out
    assert len(json.loads((tmp_path / "fresh" / "history.json").read_text())) == 2


def test_overwrite_replaces_the_whole_run_and_leaves_no_stale_file(runs, tmp_path, capsys):
    run = copy_of(runs, "finished", tmp_path)
    assert (run / "model_bma.safetensors").exists()
    code, _, err = finetune(capsys, run, "--method", "ce", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["history.json", "model_last.safetensors", "results.json"]
    assert json.loads((run / "results.json").read_text())["method"] == "ce"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


KILL_DURING_WRITE = """
import os, signal, sys
import clipood_kit.engine.runs as runs
from clipood_kit import cli
where, sig = sys.argv[1], getattr(signal, sys.argv[3] if len(sys.argv) > 3 else "SIGKILL")
if where == "files":                    # killed while the new files are written
    original = runs.save_weights
    def save_then_die(path, *a, **k):
        original(path, *a, **k)
        os.kill(os.getpid(), sig)
    runs.save_weights = save_then_die
else:                                   # killed between moving the old run away and moving the new one in
    original = runs.os.replace
    calls = []
    def replace_then_die(src, dst):
        original(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    runs.os.replace = replace_then_die
cli.main(["finetune", "--per-cell", "2", "--steps", "2", "--batch-size", "4", "--method", "ce", "--overwrite",
          "--out", sys.argv[2]])
"""


@pytest.mark.parametrize("where", ["files", "swap"])
def test_a_kill_during_the_final_write_never_pairs_old_and_new_files(runs, tmp_path, where):
    run = copy_of(runs, "finished", tmp_path)
    old_results = (run / "results.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, where, str(run)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if run.exists():                    # the old run, whole: its results and its models, nothing of the new one
        assert (run / "results.json").read_bytes() == old_results
        assert json.loads(old_results)["method"] == "clipood" and (run / "model_bma.safetensors").exists()
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden                       # the interrupted write's leftovers, beside the run
    # the next run restores the old run where it had been moved away, cleans up, and refuses to overwrite it
    again = subprocess.run([sys.executable, "-m", "clipood_kit.cli", "finetune", *FAST, "--out", str(run)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "holds a finished run" in again.stderr
    assert "removed the leftovers of an interrupted write" in again.stdout and any(h in again.stdout for h in hidden)
    assert (run / "results.json").read_bytes() == old_results and (run / "model_bma.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # with --overwrite it writes the new run
    done = subprocess.run([sys.executable, "-m", "clipood_kit.cli", "finetune", *FAST, "--method", "ce",
                           "--overwrite", "--out", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["method"] == "ce"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_terminate_signal_during_the_final_write_leaves_nothing_half_written(runs, tmp_path):
    """SIGTERM (a scheduler's cancel) during the write: the staging folder is removed at once, the old run stays."""
    run = copy_of(runs, "finished", tmp_path)
    old_results = (run / "results.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, "files", str(run), "SIGTERM"],
                          capture_output=True, text=True)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert (run / "results.json").read_bytes() == old_results
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ood_metrics_refuse_non_finite_scores(bad):
    from clipood_kit.evaluation import ood
    scores = torch.tensor([0.1, 0.5, bad])
    for fn in ood.metrics("nearest").values():
        with pytest.raises(ValueError, match="NaN or inf"):
            fn(scores, torch.tensor([0.2, 0.3]))


def test_a_real_bug_keeps_its_traceback(monkeypatch, capsys):
    """User errors are one line; anything else (here a RuntimeError from inside torch's world) propagates."""
    import clipood_kit.engine.experiment as experiment

    def broken(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(experiment, "load_clip", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        cli.main(["finetune", *FAST, "--out", "/tmp/never-written"])
    assert not Path("/tmp/never-written").exists()
