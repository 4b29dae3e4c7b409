import json
import subprocess
import sys
from dataclasses import replace

from clipood_kit.studies.bench import BenchConfig, run_bench
from clipood_kit.engine.presets import demo_experiment
from clipood_kit.studies.bench import DEMO_COLUMNS, bench_methods
from clipood_kit.engine.scoring import lookup
from cli_in_process import run_cli


def test_demo_writes_results_and_a_report_with_every_figure(tmp_path):
    exp = demo_experiment()
    exp = replace(exp, per_cell=4, train=replace(exp.train, steps=6, batch_size=8))
    cfg = BenchConfig(methods=bench_methods(("ce", "clipood", "wise-ft")), experiment=exp, columns=DEMO_COLUMNS,
                      title="test", seeds=(0, 1), umap_points=120)
    run_bench(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["summary"]) == {"zero-shot", "ce", "clipood", "clipood (last step)", "wise-ft"}
    for row in saved["summary"].values():
        for path in DEMO_COLUMNS:
            cell = lookup(row, path)
            assert len(cell["values"]) == 2 and 0 <= cell["mean"] <= 100
    # keyed by data: the summary's numbers are the per-seed numbers' mean
    values = [s["clipood"]["accuracy"]["unseen"]["new"] for s in saved["per_seed"]]
    assert saved["summary"]["clipood"]["accuracy"]["unseen"]["new"]["values"] == values
    # zero-shot does not depend on the training seed; the split seed changes its held-out images only
    assert saved["config"]["experiment"]["train"]["steps"] == 6
    html = (tmp_path / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') == 8      # OOD: one heatmap for near-, one for far-OOD
    for heading in ("Accuracy per method", "Beta moving average weights", "Class-adaptive margins",
                    "Which OOD score after which method: near-OOD", "Which OOD score after which method: far-OOD",
                    "Image features before and after fine-tuning (by class)", "Training loss"):
        assert heading in html
    # plotly.js inlined once: the page is self-contained
    assert "<script src=" not in html and html.count("Plotly.register") <= 2 and len(html) > 1_000_000


def test_cli_finetune_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_cli(["finetune", "--method", "bma", "--steps", "4", "--batch-size", "8", "--per-cell", "3", "--out",
                    str(out)], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["method"] == "bma" and result["primary"] == "bma"
    assert result["experiment"]["train"]["steps"] == 4 and result["setup"]["source_domains"] == ["blueprint"]
    assert len(json.loads((out / "history.json").read_text())) == 4
    from clipood_kit.models import load_clip
    loaded = load_clip(pretrained=str(out / "model_bma.safetensors"))
    assert loaded.model_id.startswith("tiny-clip-world/file:model_bma.safetensors")


def test_cli_finetune_rejects_an_unknown_target(tmp_path, capsys):
    proc = run_cli(["finetune", "--target", "clay", "--per-cell", "1", "--out", str(tmp_path / "r")], capsys)
    assert proc.returncode == 2 and "target domain(s) ['clay'] not in the dataset" in proc.stderr


def test_cli_finetune_in_bf16_keeps_fp32_weights(tmp_path):
    out = tmp_path / "bf16"
    # a process of its own: accelerate's state is one per process, and another precision cannot follow in it
    proc = subprocess.run([sys.executable, "-m", "clipood_kit.cli", "finetune", "--method", "clipood", "--steps", "3",
                           "--batch-size", "8", "--per-cell", "3", "--precision", "bf16", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.torch import load_file
    import torch
    weights = load_file(out / "model_bma.safetensors")
    assert all(v.dtype == torch.float32 for k, v in weights.items() if k.startswith("visual.") and v.is_floating_point())


def test_cli_compare_fast_writes_every_method_and_the_ood_columns(tmp_path, capsys):
    out = tmp_path / "cmp"
    proc = run_cli(["compare", "--fast", "--seeds", "0", "--out", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    from clipood_kit.studies.bench import COMPARE_COLUMNS, COMPARE_METHODS
    assert set(COMPARE_METHODS) | {"zero-shot"} <= set(results["summary"])
    assert {"ogen-ft", "ogen-ft (teacher)", "clipood (last step)"} <= set(results["summary"])
    for row in results["summary"].values():
        for path in COMPARE_COLUMNS:
            assert 0 <= lookup(row, path)["mean"] <= 100
        # every OOD score for every shift
        assert set(row["ood"]) == {"semantic", "covariate", "both", "glyphs", "textures"}
        assert row["ood_shifts"] == {"semantic": "near", "covariate": "covariate", "both": "near", "glyphs": "far",
                                     "textures": "far"}
        assert set(row["ood"]["semantic"]) == {"MCM", "MSP", "max-logit", "energy", "entropy"}
    assert results["config"]["methods"]["ema"]["averager"] == {"kind": "ema", "decay": 0.98}
    html = (out / "report.html").read_text()
    assert "OOD AUROC (MCM, near: semantic)" in html and "OOD AUROC (MCM, far: glyphs)" in html
    assert "Which OOD score after which method: far-OOD" in html
    assert "AUROC (MCM, near: semantic)" in proc.stdout       # the CLI table names its columns by data


def test_compare_ablation_runs_each_variant_with_its_settings(tmp_path, capsys):
    from clipood_kit.studies.bench import ABLATIONS, compare_bench
    cfg = compare_bench((0,), fast=True, ablation="ogen-ft")
    results = run_bench(cfg, tmp_path, progress=False)
    variants = ABLATIONS["ogen-ft"]
    assert set(results["summary"]) == {"zero-shot", "ce", "ogen-ft", "ogen-ft (teacher)"} | set(variants) | {
        f"{v} (teacher)" for v in variants}
    parts = {label: {p["kind"]: p for p in r[0]["method_config"]["regularisers"]} for label, r in results["runs"].items()
             if label.startswith("ogen")}
    assert {p["ogen"]["synthetic"] for p in parts.values()} == {0.0, 1.0}
    assert parts["ogen-ft, no distillation"]["self-distill"]["weight"] == 0.0
    assert parts["ogen-ft, no warm-up"]["ogen"]["warmup"] == 0.0 == parts["ogen-ft, no warm-up"]["self-distill"]["start"]
    proc = run_cli(["compare", "--ablation", "nope", "--fast", "--out", str(tmp_path / "x")], capsys)
    assert proc.returncode == 2 and "unknown ablation 'nope'" in proc.stderr
