"""The issue-18 methods on a real open_clip architecture (issue 18, point 5): ViT-B-32 from a local checkpoint file
(random init: no weights can be downloaded here), a DomainBed-style folder dataset and an --ood-data folder. Every
new method trains a step and is scored; the CLI runs one; the prompt-learning notebook runs on them (papermill)."""
import json
import shutil
from pathlib import Path

import papermill
import pytest
import torch

from clipood_kit.core.io import save_weights
from cli_in_process import run_cli
from notebook_outputs import error_outputs

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
    assert setup.zero_shot.loaded.model_id.startswith("ViT-B-32/file:vit_b32_random")
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


def test_the_cli_runs_cocoop_on_vit_b32_with_an_ood_folder(real, tmp_path, capsys):
    ckpt, data, ood = real
    out = tmp_path / "run"
    proc = run_cli(["finetune", "--model", "ViT-B-32", "--pretrained", str(ckpt), "--data", str(data), "--method",
                    "cocoop", "--steps", "1", "--batch-size", "4", "--set", "cache_dir=off", "--ood-data",
                    f"far:textures-like={ood}", "--set", "eval_batch_size=16", "--out", str(out)], capsys)
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
    errors = error_outputs(nb)
    assert not errors, errors
    text = " ".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
                    if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "The context started as" in text
    # the three predictions and their Reveal buttons (the OOD reading is behind the last one) were displayed
    views = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) >= 6, len(views)


def test_an_official_preset_and_imagenets_variants_run_end_to_end_on_vit_b32(real, tmp_path):
    """Issue 29: `clipood-base-to-new-eurosat` on a CoOp-layout tree (its split file, its template, Dassl's 16
    shots of the base classes, the test list), and an ImageNet run with ImageNet-V2 and -R scored as unseen domains,
    both through the CLI on the ViT-B-32 checkpoint."""
    import layout_trees as trees
    from clipood_kit.cli import main
    ckpt = real[0]
    trees.split_tree(tmp_path / "data", "eurosat")
    common = ["--model", "ViT-B-32", "--pretrained", str(ckpt), "--steps", "1", "--batch-size", "4", "--precision", "no", "--device", "cpu",
              "--set", "cache_dir=off", "--set", "eval_batch_size=16", "--set", "train.checkpoint_every=0"]
    assert main(["finetune", "--preset", "clipood-base-to-new-eurosat", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "eurosat"), *common]) == 0
    results = json.loads((tmp_path / "eurosat" / "results.json").read_text())
    assert results["experiment"]["data"] == f"eurosat:{tmp_path / 'data'}"
    assert results["experiment"]["templates"] == ["a centered satellite photo of {}."]
    assert results["setup"]["train_images"] == 3 * 6 and results["setup"]["eval_images"] == 5 * 4
    assert set(results["models"]["last"]["accuracy"]["train"]) >= {"base", "new", "H"}
    # ImageNet with two of its variants
    root = tmp_path / "in"
    trees.imagenet_tree(root)
    trees.imagenetv2_tree(root, labels=(1, 4))
    trees.variant_tree(root, "imagenet-r", wnids=trees.WNIDS[1:4])
    assert main(["finetune", "--data", f"imagenet:{root}", "--eval-data", f"imagenetv2:{root}", "--eval-data",
                 f"imagenet-r:{root}", "--protocol", "domain-shift", "--method", "ce",
                 "--out", str(tmp_path / "imagenet"), *common]) == 0
    results = json.loads((tmp_path / "imagenet" / "results.json").read_text())
    by_domain = results["models"]["last"]["by_domain"]
    assert set(by_domain) == {"imagenet", "imagenetv2", "imagenet-r"}
    assert all(0 <= by_domain[d]["all"] <= 100 for d in by_domain)
    assert results["setup"]["target_domains"] == ["imagenetv2", "imagenet-r"]
