import json

import pytest
import torch

from clipood_kit.evaluation import features as evaluation
from clipood_kit.evaluation.zeroshot import ZeroShotConfig, run_zeroshot
from cli_in_process import run_cli


def test_shipped_model_meets_the_zero_shot_target():
    result = run_zeroshot(ZeroShotConfig(per_cell=12, seed=1), progress=False)
    acc = result["accuracy"]
    assert acc["mean"] >= 60.0, acc
    assert min(v for k, v in acc.items() if k != "mean") >= 40.0, acc
    assert result["dataset"]["size"] == 12 * 25 * 5


def test_text_classifier_is_the_normalised_template_mean(tiny):
    model, tok, _ = tiny
    templates = ["a photo of a {}.", "a sketch of a {}."]
    clf = evaluation.text_classifier(model, tok, ["star", "heart"], templates)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.encode_text(tok(["a photo of a star.", "a sketch of a star."])), dim=-1)
    expected = torch.nn.functional.normalize(feats.mean(0), dim=-1)
    assert torch.allclose(clf[0], expected, atol=1e-6)
    assert torch.allclose(clf.norm(dim=1), torch.ones(2), atol=1e-6)
    with pytest.raises(ValueError, match="placeholder"):
        evaluation.text_classifier(model, tok, ["star"], ["a photo"])


def test_accuracy_by_domain_and_restricted_classes():
    preds = torch.tensor([0, 1, 1, 0])
    labels = torch.tensor([0, 1, 0, 0])
    doms = torch.tensor([0, 0, 1, 1])
    assert evaluation.accuracy_by_domain(preds, labels, doms, ["a", "b"]) == {"a": 100.0, "b": 50.0, "mean": 75.0}
    feats = torch.eye(3)
    clf = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1]])
    assert evaluation.classify(feats, clf).tolist() == [0, 1, 2]
    assert evaluation.classify(feats, clf, class_ids=[1, 2]).tolist() == [1, 1, 2]


def test_cli_zeroshot_on_a_folder_writes_json(world_tree, tmp_path, capsys):
    out = tmp_path / "zs.json"
    proc = run_cli(["zeroshot", "--data", str(world_tree), "--json", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["accuracy"]) == {"cartoon", "neon", "painting", "photo", "sketch", "mean"}
    assert result["config"]["data"] == str(world_tree) and result["model_id"].startswith("tiny-clip-world/file:")
    assert "mean" in proc.stdout


def test_cli_reports_a_bad_folder_as_one_clear_line(tmp_path, capsys):
    proc = run_cli(["zeroshot", "--data", str(tmp_path / "x")], capsys)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("clipood-kit zeroshot: error:") and "does not exist" in proc.stderr
