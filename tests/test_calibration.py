"""The calibration rows (`evaluation.calibration`): each piece against an independent computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipood_kit.evaluation import calibration as cal


def test_split_accuracy_counts_each_split_among_its_own_classes():
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(60, 8, generator=gen), dim=-1)
    labels = torch.arange(6).repeat(10)
    classifier = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    ids = [1, 3, 4]
    # independent: loop over the images of those classes, argmax among the three rows
    right = total = 0
    for f, y in zip(features, labels.tolist()):
        if y in ids:
            total += 1
            right += ids[int((classifier @ f).argmax())] == y
    assert cal.split_accuracy(features, labels, classifier, ids) == pytest.approx(100 * right / total)


def test_holds_checks_every_goal_and_fails_each_one():
    rows = {"zero_shot": {"base": 70.0, "new": 75.0}, "coop_change": {"base": 8.0, "new": -5.0},
            "mcm_far": {"glyphs": 90.0, "textures": 86.0}}
    assert all(cal.holds(rows).values())
    for path, value in ((("zero_shot", "new"), 81.0), (("coop_change", "base"), 5.9), (("coop_change", "new"), -2.9),
                        (("mcm_far", "textures"), 84.9)):
        bad = {k: dict(v) for k, v in rows.items()}
        bad[path[0]][path[1]] = value
        assert sum(not ok for ok in cal.holds(bad).values()) == 1, path


def test_mean_rows_is_the_mean_over_seeds():
    a = {"zero_shot": {"base": 60.0, "new": 70.0}, "coop_change": {"base": 4.0, "new": -2.0}, "mcm_far": {"x": 80.0}}
    b = {"zero_shot": {"base": 70.0, "new": 80.0}, "coop_change": {"base": 8.0, "new": -6.0}, "mcm_far": {"x": 90.0}}
    m = cal.mean_rows([a, b])
    assert m == {"zero_shot": {"base": 65.0, "new": 75.0}, "coop_change": {"base": 6.0, "new": -4.0},
                 "mcm_far": {"x": 85.0}}


def test_coop_learns_a_context_that_fits_the_base_shots():
    """Images placed near their class's prompt feature under a *different* context: the trained context lowers the
    loss, and the SGD schedule moves it (a random tiny CLIP, so nothing depends on the shipped weights)."""
    from clipood_kit.models import load_clip
    torch.manual_seed(0)
    loaded = load_clip(pretrained=None, device="cpu")
    names = ["circle", "square", "star", "heart"]
    with torch.no_grad():
        target = F.normalize(loaded.model.encode_text(loaded.tokenizer([f"a neon sign of a {n}." for n in names]))
                             .float(), dim=-1)
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat(16)
    features = F.normalize(target[labels] + 0.02 * torch.randn(64, target.shape[1], generator=gen), dim=-1)
    schedule = cal.CoOpSchedule(epochs=15, lr=0.05)
    out = cal.train_coop(loaded, names, [0, 1, 2, 3], features, labels, schedule=schedule, seed=0)
    assert out["steps"] == 15 * 2                                 # 64 shots, batch 32, last batch dropped
    assert out["losses"][-1] < 0.8 * out["losses"][1]
    assert math.isfinite(out["losses"][-1])


def test_world_task_rows_on_a_random_model_give_every_row():
    from clipood_kit.models import load_clip
    torch.manual_seed(0)
    loaded = load_clip(pretrained=None, device="cpu")
    rows = cal.world_task_rows(loaded, seed=0, shots=2, test_per_class=2, far_per_set=20,
                               schedule=cal.CoOpSchedule(epochs=2))
    assert rows["template"] == "a blueprint of a {}."
    assert set(rows["mcm_far"]) == {"glyphs", "textures"}
    values = [*rows["zero_shot"].values(), rows["coop"]["base"], rows["coop"]["new"], *rows["mcm_far"].values()]
    assert all(0.0 <= v <= 100.0 for v in values)
    assert rows["coop"]["steps"] == 2 * (2 * 13 // 32 or 1)
    assert set(cal.holds(rows)) == {"zero-shot base and new in [55, 80]", "CoOp: base >= +6", "CoOp: new <= -3",
                                    "MCM far AUROC >= 85 on every set"}


def test_folder_rows_split_sorted_classes_in_halves_and_keep_the_shots_out_of_the_test(tmp_path):
    from PIL import Image
    from clipood_kit.data import export_world, open_dataset, world
    from clipood_kit.data.far_ood import ImageFolderSet, textures
    from clipood_kit.models import load_clip
    cfg = world.WorldConfig(classes=("circle", "heart", "square", "star", "triangle"), styles=("photo", "sketch"))
    root = export_world(tmp_path / "pacs-like", per_cell=3, seed=0, config=cfg)
    far = tmp_path / "ood"
    far.mkdir()
    for i, img in enumerate(textures(6, 0)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(far / f"{i}.png")
    torch.manual_seed(0)
    loaded = load_clip(pretrained=None, device="cpu")
    dataset = open_dataset(str(root))
    rows = cal.dataset_task_rows(loaded, dataset, {"ood": ImageFolderSet(far, "far", "ood")}, seed=0, shots=2,
                                 schedule=cal.CoOpSchedule(epochs=2))
    assert set(rows["mcm_far"]) == {"ood"} and rows["coop"]["steps"] == 2     # 3 base classes x 2 shots < 32
    with pytest.raises(ValueError, match="more than 6"):
        cal.dataset_task_rows(loaded, dataset, {"ood": ImageFolderSet(far, "far", "ood")}, shots=6)
    with pytest.raises(ValueError, match="--ood-data"):
        cal.dataset_task_rows(loaded, dataset, {}, shots=2)


def test_the_shipped_model_card_records_the_calibration_its_weights_give():
    """The card's calibration rows are those of the shipped weights (a stale card beside new weights fails): seed 0
    recomputed; the mean, the verdicts and the card's markdown agree with the per-seed rows."""
    import json
    from clipood_kit.engine.pretrain import model_card_markdown, tiny_weights_path
    from clipood_kit.models.loader import load_clip
    card = json.loads(tiny_weights_path().with_suffix(".card.json").read_text())
    recorded = card["calibration"]
    assert recorded["seeds"][0] == 0 and len(recorded["runs"]) == len(recorded["seeds"]) == 3
    loaded = load_clip()
    loaded.model.eval()
    again = cal.world_task_rows(loaded, seed=0)
    for row in ("zero_shot", "coop_change", "mcm_far"):
        for key, value in recorded["runs"][0][row].items():
            assert again[row][key] == pytest.approx(value, abs=0.5), (row, key)
    for row in ("zero_shot", "coop_change", "mcm_far"):
        for key in recorded["mean"][row]:
            mean = sum(r[row][key] for r in recorded["runs"]) / 3
            assert recorded["mean"][row][key] == pytest.approx(mean)
    assert recorded["holds"] == cal.holds(recorded["mean"])
    markdown = model_card_markdown(card)
    assert cal.format_rows(recorded["mean"], recorded["seeds"]) in markdown
    assert (tiny_weights_path().with_suffix(".md")).read_text() == markdown
