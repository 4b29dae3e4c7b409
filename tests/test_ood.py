import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from clipood_kit.evaluation import ood


def _scores(seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    id_s, ood_s = torch.randn(200, generator=g) + 1.0, torch.randn(150, generator=g)
    if ties:
        id_s, ood_s = (id_s * 4).round() / 4, (ood_s * 4).round() / 4
    return id_s, ood_s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_metrics_match_scikit_learn(seed, ties):
    id_s, ood_s = _scores(seed, ties)
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    s = np.r_[id_s.numpy(), ood_s.numpy()]
    assert ood.auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ood.aupr(id_s, ood_s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert ood.fpr_at_tpr(id_s, ood_s) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_metric_extremes():
    id_s, ood_s = torch.tensor([2.0, 3.0, 4.0]), torch.tensor([0.0, 1.0])
    assert ood.auroc(id_s, ood_s) == 1.0 and ood.aupr(id_s, ood_s) == 1.0 and ood.fpr_at_tpr(id_s, ood_s) == 0.0
    assert ood.auroc(ood_s, id_s) == 0.0 and ood.fpr_at_tpr(ood_s, id_s) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        ood.auroc(id_s, torch.tensor([]))


def test_scores_follow_their_formulas():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(5, 7, generator=g) * 2 - 1
    sn = s.double().numpy()
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    p1 = softmax(sn)
    scores = ood.all_scores(s, logit_scale=50.0)
    assert np.allclose(scores["MCM"].numpy(), p1.max(1), atol=1e-6)
    assert np.allclose(scores["MSP"].numpy(), softmax(sn * 50.0).max(1), atol=1e-6)
    assert np.allclose(scores["max-logit"].numpy(), sn.max(1), atol=1e-6)
    assert np.allclose(scores["energy"].numpy(), np.log(np.exp(sn).sum(1)), atol=1e-6)
    assert np.allclose(scores["entropy"].numpy(), (p1 * np.log(p1)).sum(1), atol=1e-6)
    table = ood.evaluate(s, s - 0.5, 50.0)
    assert set(table) == {"MCM", "MSP", "max-logit", "energy", "entropy"}
    # softmax scores ignore a constant shift of all cosines: the shifted copy is indistinguishable
    assert table["MCM"]["AUROC"] == pytest.approx(50.0) and table["entropy"]["AUROC"] == pytest.approx(50.0)
    assert torch.allclose(ood.energy(s - 0.5), ood.energy(s) - 0.5, atol=1e-6)


def test_protocol_scores_ood_detection_for_every_shift():
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    from clipood_kit.engine.scoring import zero_shot_scores
    setup = prepare(ExperimentConfig(per_cell=4))
    cells = zero_shot_scores(setup)
    assert set(cells["ood"]) == {"semantic", "covariate", "both", "glyphs", "textures"}
    assert cells["ood_shifts"] == {"semantic": "near", "covariate": "covariate", "both": "near", "glyphs": "far",
                                   "textures": "far"}
    for shift in cells["ood"].values():
        assert set(shift) == {"MCM", "MSP", "max-logit", "energy", "entropy"}
        assert all(0 <= v <= 100 for row in shift.values() for v in row.values())
    # new classes in unseen styles are the easiest to tell from the training distribution
    assert cells["ood"]["both"]["MCM"]["AUROC"] > 50


def test_gl_mcm_adds_the_best_local_softmax_to_mcm():
    g = torch.Generator().manual_seed(4)
    s, local = torch.rand(6, 5, generator=g), torch.rand(6, 9, 5, generator=g) * 2 - 1
    e = np.exp(local.double().numpy())
    local_part = (e / e.sum(-1, keepdims=True)).max(axis=(1, 2))
    assert np.allclose(ood.local_mcm(local).numpy(), local_part, atol=1e-6)
    assert np.allclose(ood.gl_mcm(s, ood.local_mcm(local)).numpy(), ood.mcm(s).numpy() + local_part, atol=1e-6)
    assert np.allclose(ood.gl_mcm(s, ood.local_mcm(local), lam=0.5).numpy(), ood.mcm(s).numpy() + 0.5 * local_part,
                       atol=1e-6)
    scores = ood.all_scores(s, 50.0, ood.local_mcm(local))
    assert torch.allclose(scores["GL-MCM"].double(), torch.from_numpy(ood.mcm(s).numpy() + local_part), atol=1e-6)


def test_local_features_of_a_vit_tower_and_gl_mcm_in_the_protocol(world_tree):
    from clipood_kit.evaluation import features as evaluation
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    from clipood_kit.engine.scoring import zero_shot_scores
    setup = prepare(ExperimentConfig(model="ViT-S-32", pretrained=None, data=str(world_tree), eval_batch_size=64))
    visual = setup.zero_shot.loaded.model.visual.eval()
    images = torch.stack([setup.zero_shot.loaded.preprocess(setup.dataset[i][0]) for i in range(3)])
    with torch.no_grad():
        pooled, local = evaluation.local_image_features(visual, images)
        assert torch.allclose(pooled, visual(images), atol=1e-5)      # the hand-run trunk is the tower's own
        assert local.shape == (3, (224 // 32) ** 2, pooled.shape[1])
    cells = zero_shot_scores(setup)
    assert set(cells["ood"]["semantic"]) == {"MCM", "MSP", "max-logit", "energy", "entropy", "GL-MCM"}
    assert 0 <= cells["ood"]["semantic"]["GL-MCM"]["AUROC"] <= 100


def test_gl_mcm_on_a_resnet_tower_says_why_not(tiny):
    from clipood_kit.evaluation import features as evaluation
    model = tiny[0] if isinstance(tiny, tuple) else tiny.model
    assert not evaluation.has_local_features(model.visual)
    with pytest.raises(ValueError, match="GL-MCM needs the patch tokens .* ModifiedResNet"):
        evaluation.local_image_features(model.visual, torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_scikit_learn_and_integrates_to_the_auroc(ties):
    id_s, ood_s = _scores(5, ties)
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    fpr_ref, tpr_ref, _ = roc_curve(y, np.r_[id_s.numpy(), ood_s.numpy()], drop_intermediate=False)
    fpr, tpr = ood.roc_curve(id_s, ood_s)
    assert np.allclose(fpr.numpy(), fpr_ref) and np.allclose(tpr.numpy(), tpr_ref)
    assert np.trapezoid(tpr.numpy(), fpr.numpy()) == pytest.approx(ood.auroc(id_s, ood_s), abs=1e-12)


def _official_fpr(id_scores, ood_scores, recall_level=0.95):
    """Written from deeplearning-wisc/MCM utils/detection_util.py `fpr_and_fdr_at_recall` (ID positive), in numpy."""
    import numpy as np
    y_score = np.concatenate([id_scores, ood_scores])
    y_true = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    threshold_idxs = np.r_[np.where(np.diff(y_score))[0], y_true.size - 1]
    tps = np.cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    return fps[np.argmin(np.abs(recall - recall_level))] / len(ood_scores)


@pytest.mark.parametrize("seed", range(6))
def test_the_nearest_fpr95_rule_equals_the_official_code(seed):
    gen = torch.Generator().manual_seed(seed)
    n_id, n_ood = [(20, 30), (100, 7), (57, 57), (400, 300), (13, 200), (40, 40)][seed]
    ties = seed % 2 == 1                              # rounded scores: many ties, where the rules differ most
    id_s, ood_s = torch.randn(n_id, generator=gen) + 1, torch.randn(n_ood, generator=gen)
    if ties:
        id_s, ood_s = (id_s * 3).round() / 3, (ood_s * 3).round() / 3
    expected = _official_fpr(id_s.double().numpy(), ood_s.double().numpy())
    assert ood.fpr_at_tpr_nearest(id_s, ood_s) == pytest.approx(expected, abs=1e-12)
    # ours: the highest threshold that keeps TPR >= 95 %
    ours = ood.fpr_at_tpr(id_s, ood_s)
    thr = id_s.sort(descending=True).values[int(np.ceil(0.95 * n_id)) - 1]
    assert ours == pytest.approx((ood_s >= thr).double().mean().item())


def test_fpr_rule_is_validated_and_selects_the_metric():
    id_s, ood_s = torch.tensor([3.0, 2.0, 1.0, 0.5]), torch.tensor([2.5, 0.7, 0.1])
    a = ood.evaluate(id_s[:, None].repeat(1, 2), ood_s[:, None].repeat(1, 2), 1.0, fpr_rule="nearest")
    assert a["max-logit"]["FPR95"] == pytest.approx(100 * ood.fpr_at_tpr_nearest(id_s, ood_s))
    with pytest.raises(ValueError, match="fpr_rule must be one of"):
        ood.evaluate(id_s[:, None], ood_s[:, None], 1.0, fpr_rule="sklearn")


def test_gl_mcm_lambda_is_a_parameter():
    cos = torch.tensor([[0.3, 0.1], [0.2, 0.25]])
    local = torch.tensor([0.9, 0.4])
    for lam in (0.5, 1.0):
        got = ood.all_scores(cos, 10.0, local, {"GL-MCM.lambda": lam})["GL-MCM"]
        assert torch.allclose(got, ood.mcm(cos) + lam * local)
    half = ood.evaluate(cos, cos.flip(0), 10.0, local, local.flip(0), params={"GL-MCM.lambda": 0.5})
    assert "GL-MCM" in half


def test_the_score_registry_takes_a_new_score_with_a_parameter_and_the_experiment_sets_it(monkeypatch):
    """A score with a parameter is one registry entry; `--set ood.SCORE.PARAM=V` reaches it with no new field."""
    from clipood_kit.engine.builder import build_experiment
    monkeypatch.setitem(ood.SCORES, "top2-gap", ood.Score(
        lambda c, scale, local, weight: weight * (c.topk(2, dim=1).values[:, 0] - c.topk(2, dim=1).values[:, 1]),
        {"weight": 1.0}))
    cos = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.25, 0.1]])
    got = ood.all_scores(cos, 10.0, params={"top2-gap.weight": 2.0})["top2-gap"]
    assert torch.allclose(got, torch.tensor([0.4, 0.1]))
    exp = build_experiment(settings=["ood.top2-gap.weight=3", "ood.GL-MCM.lambda=0.5"])
    assert exp.ood_params == {"top2-gap.weight": 3.0, "GL-MCM.lambda": 0.5}
    with pytest.raises(ValueError, match="unknown OOD score parameter 'MCM.lambda'"):
        build_experiment(settings=["ood.MCM.lambda=1"])
    with pytest.raises(ValueError, match="must be > 0"):
        ood.score_params({"MCM.temperature": 0.0})
