"""Far-OOD sets beside the dataset (issue 18): the world's rendered glyphs and textures, image folders
(`--ood-data`), their place in the results (keyed by shift, with its kind) and their checks."""
import math

import pytest
import torch
from PIL import Image

from clipood_kit.data import far_ood, world


def test_the_world_sets_are_seeded_and_are_no_task_class():
    a = far_ood.glyphs(12, 3, ["photo", "sketch"])
    assert a.shape == (12, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, far_ood.glyphs(12, 3, ["photo", "sketch"]))
    assert not torch.equal(a, far_ood.glyphs(12, 4, ["photo", "sketch"]))
    t = far_ood.textures(12, 3)
    assert torch.equal(t, far_ood.textures(12, 3)) and not torch.equal(t, far_ood.textures(12, 4))
    vocab = set(world.vocabulary())
    for name in list(far_ood.GLYPHS) + list(far_ood.PATTERNS):   # no class, and a word the tiny CLIP knows: CLIP
        assert name not in world.SHAPES and name in vocab        # met far more concepts than a task names


def test_every_glyph_differs_from_every_class_shape():
    """A glyph is not a redrawn class: its mask overlaps each class shape's (same pose) by IoU < 0.5."""
    s = torch.linspace(-1, 1, 96)
    v, u = torch.meshgrid(-s, s, indexing="ij")
    for g, fn in far_ood.GLYPHS.items():
        m = fn(u, v)
        assert 0.05 < m.float().mean() < 0.6, g
        for c, shape in world.SHAPES.items():
            other = shape(u, v)
            iou = (m & other).sum() / (m | other).sum()
            assert iou < 0.5, (g, c, float(iou))


def test_glyphs_are_drawn_in_the_given_styles_only():
    with pytest.raises(ValueError, match="world styles"):
        far_ood.glyphs(4, 0, ["oil"])
    with pytest.raises(ValueError, match="world styles"):
        far_ood.glyphs(4, 0, [])


@pytest.mark.parametrize("spec, parsed", [
    ("/d/iNaturalist", ("far", "iNaturalist", "/d/iNaturalist")),
    ("near:/d/ninco", ("near", "ninco", "/d/ninco")),
    ("far:inat=/d/x", ("far", "inat", "/d/x")),
    ("places=/d/Places", ("far", "places", "/d/Places")),
])
def test_ood_data_specs(spec, parsed):
    assert far_ood.parse_ood_data(spec) == parsed


def test_a_spec_without_a_folder_is_refused():
    with pytest.raises(ValueError, match="needs a folder"):
        far_ood.parse_ood_data("near:name=")


def _write(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")


def test_an_image_folder_is_read_at_any_depth_in_path_order(tmp_path):
    imgs = far_ood.textures(5, 0)
    _write(tmp_path / "set" / "b", imgs[:2])
    _write(tmp_path / "set" / "a" / "deep", imgs[2:])
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    (tmp_path / "set" / ".hidden").mkdir()
    _write(tmp_path / "set" / ".hidden", imgs[:1])
    s = far_ood.ImageFolderSet(tmp_path / "set")
    assert s.name == "set" and s.kind == "far" and len(s) == 5 and s.labels.tolist() == [-1] * 5
    assert torch.equal(torch.stack([s.load(i) for i in range(5)]), torch.cat([imgs[2:], imgs[:2]]))
    assert s[0][1:] == (-1, 0)


def test_bad_folders_are_named(tmp_path):
    from clipood_kit.data import DatasetError
    with pytest.raises(DatasetError, match="does not exist"):
        far_ood.ImageFolderSet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        far_ood.ImageFolderSet(tmp_path / "empty")
    _write(tmp_path / "broken", far_ood.textures(2, 0))
    (tmp_path / "broken" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    s = far_ood.ImageFolderSet(tmp_path / "broken")
    with pytest.raises(DatasetError, match="1 unreadable image.*0001.png"):
        s.verify()


def test_a_folders_fingerprint_follows_its_files(tmp_path):
    _write(tmp_path / "s", far_ood.textures(2, 0))
    before = far_ood.ImageFolderSet(tmp_path / "s").fingerprint()
    _write(tmp_path / "s", far_ood.textures(3, 1))
    assert far_ood.ImageFolderSet(tmp_path / "s").fingerprint() != before


def test_the_experiment_checks_its_ood_sets(tmp_path, world_tree):
    from clipood_kit.engine.builder import build_experiment
    with pytest.raises(ValueError, match="unknown world far-OOD set"):
        build_experiment("tiny-world", settings=["far_ood_sets=glyphs,fractals"])
    with pytest.raises(ValueError, match="far_ood_sets are the embedded world's"):
        build_experiment("tiny-world", data=str(world_tree), settings=["far_ood_sets=glyphs"])
    _write(tmp_path / "a" / "textures", far_ood.textures(2, 0))
    from clipood_kit.engine.experiment import prepare
    with pytest.raises(ValueError, match="two OOD sets are named 'textures'"):
        prepare(build_experiment("tiny-world", per_cell=2, cache_dir="off", ood_data=[str(tmp_path / "a" / "textures")]))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small world experiment with a folder OOD set holding copies of its own in-distribution images: the
    experiment refuses such a set (`far_ood.check_disjoint`), so it is added after `prepare`, as a control whose
    AUROC must be exactly 50."""
    from clipood_kit.engine.builder import build_experiment
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.engine.scoring import ood_sets
    base = prepare(build_experiment("tiny-world", per_cell=5, cache_dir="off", settings=["far_ood_sets="]))
    in_dist = ood_sets(base, base.dataset.labels[base.split.eval_idx], base.dataset.domain_ids[base.split.eval_idx])["ID"]
    folder = tmp_path_factory.mktemp("ood") / "own-id-images"
    _write(folder, base.dataset.images[base.split.eval_idx[in_dist]])
    exp = build_experiment("tiny-world", per_cell=5, cache_dir="off", ood_data=[f"near:{folder}"])
    with pytest.raises(ValueError, match="shares .* image"):
        prepare(exp)
    setup = prepare(build_experiment("tiny-world", per_cell=5, cache_dir="off"))
    setup.ood_sets["own-id-images"] = far_ood.ImageFolderSet(folder, "near")
    return setup


def test_the_experiment_holds_the_world_sets_and_the_folders(small):
    assert list(small.ood_sets) == ["glyphs", "textures", "own-id-images"]
    assert [s.kind for s in small.ood_sets.values()] == ["far", "far", "near"]
    n_id = len(small.ood_sets["own-id-images"])
    assert len(small.ood_sets["glyphs"]) == len(small.ood_sets["textures"]) == n_id     # as many as the ID images
    assert small.describe()["ood_sets"]["glyphs"]["kind"] == "far"


def test_results_are_keyed_by_shift_with_its_kind(small):
    from clipood_kit.engine.scoring import zero_shot_scores
    sc = zero_shot_scores(small)
    assert sc["ood_shifts"] == {"semantic": "near", "covariate": "covariate", "both": "near", "glyphs": "far",
                                "textures": "far", "own-id-images": "near"}
    # the in-distribution images themselves, read back from PNG files, are indistinguishable: AUROC 50, up to the
    # rounding of encoding them in other batches: each image paired with its own copy is a tie that may fall
    # either way (one thread or two), which moves AUROC by at most 50 / n points over n images
    n = len(small.ood_sets["own-id-images"])
    for score, m in sc["ood"]["own-id-images"].items():
        assert m["AUROC"] == pytest.approx(50.0, abs=50.0 / n + 1e-9), (score, n)


def test_a_far_set_auroc_equals_an_independent_computation(small):
    """AUROC of MCM on the glyphs = the share of (ID, OOD) pairs an ID image wins, by brute force over pairs."""
    from clipood_kit.engine.encoding import encode, encode_ood_set
    from clipood_kit.engine.scoring import ood_sets, zero_shot_scores
    state = small.zero_shot.state
    enc = encode(small, state)
    in_dist = ood_sets(small, enc["labels"], enc["domains"])["ID"]
    t = small.zero_shot.text_features[small.split.base_ids]
    mcm = lambda f: torch.softmax((f @ t.T).double(), 1).max(1).values      # noqa: E731  (T = 1)
    a, b = mcm(enc["features"][in_dist]), mcm(encode_ood_set(small, state, "glyphs")["features"])
    wins = (a[:, None] > b[None]).double() + 0.5 * (a[:, None] == b[None]).double()
    expected = 100 * wins.mean().item()
    assert zero_shot_scores(small)["ood"]["glyphs"]["MCM"]["AUROC"] == pytest.approx(expected, abs=1e-6)
    assert not math.isclose(expected, 50.0, abs_tol=1.0)      # the glyphs are not the ID images


def test_the_fast_scorer_scores_the_ood_sets_as_the_full_path(small):
    from clipood_kit.engine.scoring import StateScorer, evaluate_state
    fast, full = StateScorer(small)(small.zero_shot.state), evaluate_state(small, small.zero_shot.state)
    for shift in ("glyphs", "textures", "own-id-images"):
        for score, m in full["ood"][shift].items():
            assert fast["ood"][shift][score]["AUROC"] == pytest.approx(m["AUROC"], abs=1e-4), (shift, score)


def test_ood_score_sets_hold_every_shift(small):
    from clipood_kit.engine.scoring import ood_score_sets
    sets = ood_score_sets(small, small.zero_shot.state)
    assert set(sets) == {"ID", "semantic", "covariate", "both", "glyphs", "textures", "own-id-images"}
    assert len(sets["glyphs"]["MCM"]) == len(small.ood_sets["glyphs"])
