"""The issue-18 methods on a real open_clip architecture (issue 18, point 5): ViT-B-32 from a local checkpoint file
(random init: no weights can be downloaded here), a DomainBed-style folder dataset and an --ood-data folder. Every
new method trains a step and is scored; the CLI runs one; the prompt-learning notebook runs on them (papermill)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import torch

from clipood_kit.core.io import save_weights

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NEW_METHODS = ("coop", "cocoop", "clip-adapter", "tip-adapter", "tip-adapter-f", "flyp", "lp-ft")


@pytest.fixture(scope="module")
def real(tmp_path_factory, world_tree):
    """(checkpoint file, folder dataset of 2 domains x 4 classes x 3 images, an OOD folder of 6 images)."""
    from clipood_kit.models import load_clip
    root = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    ckpt = root / "vit_b32_random.safetensors"
    save_weights(ckpt, load_clip("ViT-B-32", pretrained=None).model.state_dict())
    data = root / "mini"
    for domain in ("photo", "sketch"):
        for cls in ("circle", "heart", "square", "star"):
            shutil.copytree(world_tree / domain / cls, data / domain / cls)
    ood = root / "far-set"
    ood.mkdir()
    for i, f in enumerate(sorted((world_tree / "neon" / "gear").glob("*.png")) +
                          sorted((world_tree / "cartoon" / "sun").glob("*.png"))):
        shutil.copyfile(f, ood / f"{i}.png")
    return ckpt, data, ood


def test_every_new_method_trains_and_scores_on_vit_b32(real):
    from clipood_kit.engine.builder import build_experiment
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.engine.runs import run_method
    from clipood_kit.methods import compose
    ckpt, data, ood = real
    setup = prepare(build_experiment(model="ViT-B-32", pretrained=str(ckpt), data=str(data), steps=1, batch_size=4,
                                     lr=1e-3, cache_dir="off", eval_batch_size=16, ood_data=[str(ood)]))
    assert setup.loaded.model_id.startswith("ViT-B-32/file:vit_b32_random")
    assert list(setup.ood_sets) == ["far-set"] and setup.ood_sets["far-set"].kind == "far"
    for name in NEW_METHODS:
        r = run_method(setup.for_method(compose(name)), progress=False)
        scores = r["models"][r["primary"]]
        assert scores["ood_shifts"]["far-set"] == "far", name
        assert set(scores["ood"]["far-set"]) >= {"MCM", "MSP", "max-logit", "energy", "GL-MCM"}, name   # a ViT: GL-MCM
        assert all(0 <= v <= 100 for v in scores["ood"]["far-set"]["MCM"].values()), name
        assert all(torch.isfinite(torch.tensor(row["loss"])) for row in r["history"]), name
        trained = {k.split(".")[1] for k in r["states"]["last"] if k.startswith("parts.")}
        assert (name.replace("tip-adapter-f", "tip-adapter") in trained) or name == "flyp", (name, trained)


def test_ogen_in_its_own_setting_trains_and_scores_on_vit_b32(real):
    """OGEN's prompt setting on a ViT: base-to-new on the folder (2 base, 2 new classes, so k = 1 neighbour), a
    warm-up step, then the synthetic cross-entropy; only the context and the generator train."""
    from clipood_kit.engine.builder import build_experiment
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.engine.runs import run_method
    ckpt, data, ood = real
    exp = build_experiment(model="ViT-B-32", pretrained=str(ckpt), data=str(data), steps=5, batch_size=4, lr=2e-3,
                           cache_dir="off", eval_batch_size=16, ood_data=[str(ood)], method="ogen",
                           protocol="base-to-new", settings=["ogen.k=1"])
    setup = prepare(exp)
    r = run_method(setup, progress=False)
    h = r["history"]
    assert [row["warm_up"] for row in h] == [1, 0, 0, 0, 0] and "ce_unknown" in h[-1]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in h)
    assert set(r["states"]["last"]) == {"parts.coop.ctx", "parts.coop.tokens"} and set(r["models"]) == {"last", "teacher"}
    assert set(r["models"]["last"]["ood"]["far-set"]) >= {"MCM", "GL-MCM"}


def test_the_cli_runs_cocoop_on_vit_b32_with_an_ood_folder(real, tmp_path):
    ckpt, data, ood = real
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "clipood_kit.cli", "finetune", "--model", "ViT-B-32", "--pretrained",
                           str(ckpt), "--data", str(data), "--method", "cocoop", "--steps", "1", "--batch-size", "4",
                           "--set", "cache_dir=off", "--ood-data", f"far:textures-like={ood}", "--set",
                           "eval_batch_size=16", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"]["ood_data"] == [f"far:textures-like={ood}"]
    assert results["models"]["last"]["ood_shifts"]["textures-like"] == "far"
    assert results["setup"]["ood_sets"]["textures-like"]["root"] == str(ood.resolve())


def test_the_prompt_learning_notebook_runs_on_vit_b32(real, tmp_path):
    ckpt, data, ood = real
    out = tmp_path / "07.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "07_prompt_learning.ipynb"), str(out), kernel_name="python3",
                               parameters={"MODEL": "ViT-B-32", "PRETRAINED": str(ckpt), "DATA": str(data),
                                           "OOD_DATA": [str(ood)], "STEPS": 1, "SHOTS": [1]},
                               cwd=str(NOTEBOOKS), progress_bar=False, execution_timeout=900)
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    text = " ".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
                    if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "The context started as" in text
    # the three predictions and their Reveal buttons (the OOD reading is behind the last one) were displayed
    views = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) >= 6, len(views)
