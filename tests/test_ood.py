import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from clipood_kit import ood


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
    from clipood_kit.protocols import ExperimentConfig, prepare, zero_shot_cells
    setup = prepare(ExperimentConfig(per_cell=4))
    cells = zero_shot_cells(setup)
    assert set(cells["ood"]) == {"semantic", "covariate", "both"}
    for shift in cells["ood"].values():
        assert set(shift) == {"MCM", "MSP", "max-logit", "energy", "entropy"}
        assert all(0 <= v <= 100 for row in shift.values() for v in row.values())
    # new classes in unseen styles are the easiest to tell from the training distribution
    assert cells["ood"]["both"]["MCM"]["AUROC"] > 50
