"""Nothing that looks right while it is wrong (issue 26): a saved trained state is bound to the base weights it was
trained from, and its metadata is checked field by field; every refusal names the problem and the fix."""
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from clipood_kit.core.io import save_weights
from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.runs import run
from clipood_kit.models.loader import load_clip, tiny_weights_path


@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
    """A `ce` run's saved trained state (image tower only: the text tower comes from the base)."""
    out = tmp_path_factory.mktemp("trust") / "run"
    run(build_experiment(per_cell=2, steps=2, batch_size=8, method="ce", cache_dir="off",
                         settings=["far_ood_sets="]), out, progress=False)
    return out / "model_last.safetensors"


def _metadata(path):
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _rewrite(src, dst, **changes):
    """A copy of the state with its metadata changed (a value None removes the field)."""
    meta = {**_metadata(src), **changes}
    save_weights(dst, load_file(src), {k: v for k, v in meta.items() if v is not None})
    return dst


def test_the_state_records_its_base_digest_and_loads_onto_it(state_file):
    meta = _metadata(state_file)
    assert meta["base"] == "default" and meta["base_digest"].startswith("sha256:")
    loaded = load_clip(pretrained=str(state_file))
    assert torch.equal(loaded.model.state_dict()["visual.conv1.weight"], load_file(state_file)["visual.conv1.weight"])


def test_a_state_refuses_a_base_that_changed_since_the_run(state_file, tmp_path, monkeypatch):
    """Another CLIPOOD_KIT_DATA (or a new `clipood-kit pretrain`) puts other weights under the same name."""
    other = load_file(tiny_weights_path())
    other["text_projection"] = other["text_projection"] * 1.01
    save_weights(tmp_path / "tiny-clip-world.safetensors", other)
    monkeypatch.setenv("CLIPOOD_KIT_DATA", str(tmp_path))
    recorded = _metadata(state_file)["base_digest"]
    with pytest.raises(ValueError, match=rf"trained on base weights {recorded}, but its base default .* is now "
                                         rf"sha256:[0-9a-f]{{16}}: the base changed"):
        load_clip(pretrained=str(state_file))


def test_a_state_whose_base_field_names_other_weights_is_refused(state_file, tmp_path):
    other = load_file(tiny_weights_path())
    other["logit_scale"] = other["logit_scale"] + 0.5
    save_weights(tmp_path / "other.safetensors", other)
    edited = _rewrite(state_file, tmp_path / "edited.safetensors", base=str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="the base changed"):
        load_clip(pretrained=str(edited))


def test_a_state_written_before_base_digest_existed_is_checked_through_base_id(state_file, tmp_path, monkeypatch):
    old = _rewrite(state_file, tmp_path / "old.safetensors", base_digest=None)
    assert load_clip(pretrained=str(old)).model is not None
    other = load_file(tiny_weights_path())
    other["logit_scale"] = other["logit_scale"] + 0.5
    (tmp_path / "data").mkdir()
    save_weights(tmp_path / "data" / "tiny-clip-world.safetensors", other)
    monkeypatch.setenv("CLIPOOD_KIT_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match="the base changed"):
        load_clip(pretrained=str(old))


@pytest.mark.parametrize("changes, message", [
    ({"architecture": None}, r"metadata field\(s\) \['architecture'\] missing"),
    ({"base": "SELF"}, "metadata field 'base' names the file itself"),
    ({"format": "something else"}, "metadata field 'format' is 'something else', expected 'clipood-kit trained state'"),
    ({"architecture": "no-such-arch"}, "metadata field 'architecture' is 'no-such-arch', which is no open_clip"),
    ({"architecture": "RN50"}, "holds a trained state of RN50, not tiny-clip-world: pass --model RN50"),
])
def test_tampered_metadata_is_refused_by_field(state_file, tmp_path, changes, message):
    target = tmp_path / "tampered.safetensors"
    changes = {k: (str(target) if v == "SELF" else v) for k, v in changes.items()}
    _rewrite(state_file, target, **changes)
    with pytest.raises(ValueError, match=message):
        load_clip(pretrained=str(target))


def test_a_base_that_is_itself_a_trained_state_is_refused(state_file, tmp_path):
    chained = _rewrite(state_file, tmp_path / "chained.safetensors", base=str(state_file))
    with pytest.raises(ValueError, match="itself a trained state"):
        load_clip(pretrained=str(chained))


def test_a_state_whose_architecture_was_edited_is_refused_with_the_digests(state_file, tmp_path):
    """architecture='RN50' with --model RN50: 'default' is no weights for RN50, so the recorded base does not
    match (before: a raw torch error from the shapes)."""
    target = _rewrite(state_file, tmp_path / "rn50.safetensors", architecture="RN50")
    with pytest.raises(ValueError, match="the base changed .*'architecture'"):
        load_clip("RN50", pretrained=str(target), device="cpu")


def test_the_cli_prints_one_line(state_file, tmp_path, capsys):
    from clipood_kit.cli import main
    target = _rewrite(state_file, tmp_path / "noarch.safetensors", architecture=None)
    code = main(["zeroshot", "--pretrained", str(target), "--per-cell", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "metadata field(s) ['architecture'] missing" in err


# -- OOD sets that are the ID data ------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["root", "domain", "copy"])
def test_an_ood_set_sharing_images_with_the_id_data_is_refused_by_name(world_tree, tmp_path, which):
    from clipood_kit.engine.experiment import prepare
    if which == "root":
        ood = world_tree
    elif which == "domain":
        ood = world_tree / "photo"
    else:                                              # a copy elsewhere: caught by content
        ood = tmp_path / "ood"
        shutil.copytree(world_tree / "cartoon", ood)
    exp = build_experiment(data=str(world_tree), ood_data=[f"mine={ood}"], cache_dir="off", method="ce")
    with pytest.raises(ValueError, match=r"OOD set 'mine' .* (overlaps the ID dataset's folder|shares \d+ image)"):
        prepare(exp)


def test_an_export_of_the_world_as_ood_is_refused_by_its_pixels(tmp_path):
    from clipood_kit.data import export_world
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.data import world
    from clipood_kit.engine.presets import DEMO_STYLES
    tree = export_world(tmp_path / "w", per_cell=2, seed=0, config=world.WorldConfig(styles=DEMO_STYLES))
    exp = build_experiment(per_cell=2, ood_data=[str(tree / "photo")], cache_dir="off", method="ce",
                           settings=["far_ood_sets="])
    with pytest.raises(ValueError, match="shares .* the same pixels"):
        prepare(exp)


def test_an_ood_folder_whose_path_holds_an_equals_sign_is_read_whole(tmp_path):
    from clipood_kit.data.far_ood import parse_ood_data
    folder = tmp_path / "a=b" / "ood"
    folder.mkdir(parents=True)
    assert parse_ood_data(str(folder)) == ("far", "ood", str(folder))
    assert parse_ood_data(f"near:x={folder}") == ("near", "x", str(folder))
    assert parse_ood_data("x=b/ood")[1:] == ("x", "b/ood")              # NAME=FOLDER when the whole is no folder
    assert parse_ood_data("data/a=b")[1:] == ("a=b", "data/a=b")        # a name holds no '/': the whole is a path


def test_a_one_class_dataset_is_refused_before_any_work(world_tree, tmp_path):
    from clipood_kit.cli import main
    for domain in ("photo", "sketch"):
        shutil.copytree(world_tree / domain / "arrow", tmp_path / "one" / domain / "arrow")
    code = main(["finetune", "--data", str(tmp_path / "one"), "--protocol", "domain-shift", "--method", "ce",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()
    from clipood_kit.data import open_dataset
    with pytest.raises(ValueError, match="has one class .*needs at least 2 classes"):
        open_dataset(str(tmp_path / "one"))


# -- recorded configs are the ones that ran ----------------------------------------------------------------------

@pytest.mark.parametrize("settings, expected", [
    (["coop.ctx_init=a photo"], ("a photo", 2)),                       # n_ctx follows ctx_init (official CoOp)
    (["coop.ctx_init=", "coop.n_ctx=6"], ("", 6)),
    (["coop.n_ctx=6", "coop.ctx_init="], ("", 6)),                     # in either order
])
def test_coop_records_the_context_that_runs(settings, expected):
    cfg = build_experiment(method="coop", settings=settings).method.loss
    assert (cfg.ctx_init, cfg.n_ctx) == expected


@pytest.mark.parametrize("method, settings, message", [
    ("coop", ["coop.n_ctx=0"], "coop.n_ctx must be an integer >= 1, got 0"),
    ("coop", ["coop.n_ctx=8"], "coop.n_ctx=8 disagrees with coop.ctx_init 'a photo of a' \\(4 words"),
    ("cocoop", ["cocoop.n_ctx=2"], "cocoop.n_ctx=2 disagrees with cocoop.ctx_init"),
])
def test_a_context_length_the_run_would_ignore_is_refused(method, settings, message):
    with pytest.raises(ValueError, match=message):
        build_experiment(method=method, settings=settings)


def test_a_context_too_long_for_the_text_tower_is_one_short_line():
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.methods import Method
    setup = prepare(build_experiment(per_cell=1, method="coop", cache_dir="off",
                                     settings=["coop.ctx_init=", "coop.n_ctx=500", "far_ood_sets="]))
    with pytest.raises(ValueError) as e:
        Method(setup.cfg.method).check(setup.method_context())
    assert len(str(e.value)) < 400 and "500 words" in str(e.value) and "context length is 12" in str(e.value)


def test_a_per_image_prompt_method_warns_of_its_cost():
    from clipood_kit.methods import Method, compose
    note = Method(compose("cocoop")).cost_note(2048, 25)
    assert "51,200 prompt passes a step" in note and "lower --batch-size" in note
    assert Method(compose("cocoop")).cost_note(32, 25) is None and Method(compose("coop")).cost_note(2048, 25) is None


# -- studies and benches count what ran --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(seeds=[0, 0]), r"seeds \[0\] given more than once"),
    (dict(methods=["zero-shot", "zero-shot"]), r"methods \['zero-shot'\] given more than once"),
    (dict(shots=[1, 2, 1]), r"shots \[1\] given more than once"),
])
def test_a_study_refuses_repeats(kwargs, message):
    from clipood_kit.studies.ood_study import StudyConfig
    with pytest.raises(ValueError, match=message):
        StudyConfig(**kwargs)


def test_a_bench_refuses_repeated_seeds():
    from clipood_kit.studies.bench import compare_bench, demo_bench
    with pytest.raises(ValueError, match=r"seeds \[1\] given more than once"):
        demo_bench([1, 1])
    with pytest.raises(ValueError, match=r"seeds \[0\] given more than once"):
        compare_bench([0, 2, 0], fast=True)


def _no_work(monkeypatch):
    import clipood_kit.studies.bench as bench
    import clipood_kit.studies.ood_study as study

    def refuse(*a, **k):
        raise AssertionError("work started before --out was checked")
    monkeypatch.setattr(study, "prepare", refuse)
    monkeypatch.setattr(bench, "fan_out", refuse)


def test_out_is_checked_before_any_work(tmp_path, monkeypatch):
    from clipood_kit.studies.bench import compare_bench, run_bench
    from clipood_kit.studies.ood_study import StudyConfig, run_study, study_experiment
    _no_work(monkeypatch)
    (tmp_path / "file").write_text("x")
    cfg = StudyConfig(experiment=study_experiment(fast=True), methods=["zero-shot"], shots=[1], seeds=[0])
    with pytest.raises(NotADirectoryError, match="--out .*file is a file"):
        run_study(cfg, tmp_path / "file", progress=False)
    with pytest.raises(NotADirectoryError, match="--out .*file is a file"):
        run_bench(compare_bench([0], fast=True), tmp_path / "file", progress=False)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds finished study .*--overwrite"):
        run_study(cfg, tmp_path / "done", progress=False)
    with pytest.raises(FileExistsError, match="holds finished bench results .*--overwrite"):
        run_bench(compare_bench([0], fast=True), tmp_path / "done", progress=False)
    with pytest.raises(AssertionError, match="work started"):        # --overwrite goes on to the work
        run_study(cfg, tmp_path / "done", progress=False, overwrite=True)


def test_a_sweep_refuses_repeats_and_finished_results(tmp_path):
    from clipood_kit.studies.sweeps import run_sweep
    exp = build_experiment(method="ce", per_cell=1)
    with pytest.raises(ValueError, match=r"values \[0.5\] given more than once"):
        run_sweep("wise", exp, [0.5, 0.5], [], tmp_path / "s")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds finished sweep"):
        run_sweep("wise", exp, [0.5], [], tmp_path / "s")
