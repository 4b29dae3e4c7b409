"""One experiment spec and one builder: the CLI, the Python API and results.json agree, bit for bit."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clipood_kit.engine.builder import OVERRIDES, apply_overrides, build_experiment, spec_from_dict, with_seed
from clipood_kit.engine.presets import get_preset

ARGS = ["--per-cell", "3", "--steps", "4", "--batch-size", "8", "--seed", "5", "--method", "car-ft-clipood",
        "--set", "mms.margin_lambda=0.2", "--set", "cache_dir=off", "--template", "a {}.", "--template",
        "a sketch of a {}."]


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# the Python side runs in a fresh process, as a later reproduction does: bit equality is a property of two fresh
# processes with the same settings (a long-lived test worker's earlier work may change a float's last bit)
REPRODUCE = """
import json, sys
from pathlib import Path
from clipood_kit.engine.builder import spec_from_dict
from clipood_kit.engine.runs import run
run(spec_from_dict(json.loads(Path(sys.argv[1]).read_text())["experiment"]), Path(sys.argv[2]), progress=False)
"""


def test_a_cli_run_is_reproduced_from_python_by_its_spec_alone(tmp_path):
    cli = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "clipood_kit.cli", "finetune", *ARGS, "--out", str(cli)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = json.loads((cli / "results.json").read_text())
    spec = spec_from_dict(recorded["experiment"])
    assert spec.to_dict() == recorded["experiment"]           # results.json holds the whole spec
    api = tmp_path / "api"
    proc = subprocess.run([sys.executable, "-c", REPRODUCE, str(cli / "results.json"), str(api)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((api / "results.json").read_text())
    for d in (recorded, again):
        d.pop("seconds")
    assert again == recorded
    assert _files(api) == _files(cli)
    for name in _files(cli):
        if name.endswith(".safetensors"):
            a, b = load_file(cli / name), load_file(api / name)
            assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
    # the builder with the CLI's options gives the same spec
    built = build_experiment(per_cell=3, steps=4, batch_size=8, seed=5, method="car-ft-clipood",
                             templates=["a {}.", "a sketch of a {}."],
                             settings=["mms.margin_lambda=0.2", "cache_dir=off"])
    assert built.to_dict() == recorded["experiment"]


def test_the_seed_rule_sets_both_seeds_in_one_place():
    exp = build_experiment(seed=7)
    assert exp.split_seed == 7 and exp.train.seed == 7
    assert with_seed(get_preset("tiny-world"), 7).to_dict() == exp.to_dict()
    alone = build_experiment(settings=["split_seed=3"])
    assert alone.split_seed == 3 and alone.train.seed == get_preset("tiny-world").train.seed


def test_unknown_overrides_and_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['stepz'\]"):
        build_experiment(stepz=3)
    with pytest.raises(ValueError, match="target domain"):
        build_experiment(target=["marble"])
    with pytest.raises(ValueError, match="no part 'bma'"):
        apply_overrides(get_preset("tiny-world"), ["bma.alpha=0.2"], method="ce")
    assert set(OVERRIDES) >= {"model", "pretrained", "data", "method", "seed", "templates", "steps"}


def test_world_styles_choose_the_grid_and_the_far_sets_style_and_bad_ones_are_named(world_tree):
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    from clipood_kit.data import world
    setup = prepare(build_experiment(per_cell=2, cache_dir="off", source=["blueprint"],
                                     settings=["world_styles=photo,blueprint"]))
    assert setup.dataset.domains == ["photo", "blueprint"] and setup.describe()["target_domains"] == ["photo"]
    glyphs = setup.ood_sets["glyphs"]
    assert glyphs.identity["styles"] == ["blueprint"]
    # the rendered glyphs are the blueprint renderer's: equal to far_ood.glyphs in that style of that world
    from clipood_kit.data.far_ood import glyphs as render_glyphs
    wc = world.WorldConfig(styles=("photo", "blueprint"))
    assert (glyphs.load(0) == render_glyphs(glyphs.identity["n"], glyphs.identity["seed"], ["blueprint"], wc)[0]).all()
    for bad in (["photo", "photo"], ["oil"], []):
        with pytest.raises(ValueError, match="world_styles must be distinct styles"):
            ExperimentConfig(world_styles=bad)
    with pytest.raises(ValueError, match="a folder dataset's domains are its folders"):
        ExperimentConfig(data=str(world_tree), world_styles=["photo"])


def test_a_folder_in_place_of_the_world_drops_the_specs_world_only_choices_unless_given(world_tree):
    from clipood_kit.studies.ood_study import study_experiment
    task = study_experiment(fast=True)
    assert task.world_styles and task.source_domains == ["blueprint"] and task.templates == ["a blueprint of a {}."]
    folder = apply_overrides(task, data=str(world_tree))
    assert (folder.world_styles, folder.source_domains, folder.templates) == (None, None, None)
    kept = apply_overrides(task, data=str(world_tree), templates=["a sketch of a {}."], source=["photo"])
    assert kept.templates == ["a sketch of a {}."] and kept.source_domains == ["photo"]
    # --target on the world counts the spec's own styles
    assert apply_overrides(task, target=["photo"]).source_domains == ["blueprint"]
