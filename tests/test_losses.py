import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipood_kit import class_margins, mms_loss
from clipood_kit.methods import margin_logits


def _reference_mms(img, txt, labels, lam, scale):
    """Independent loop over samples and classes in float64 numpy, straight from the paper's definition."""
    img = img.double().numpy()
    txt = txt.double().numpy()
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    losses = []
    for i, y in enumerate(labels.tolist()):
        z = []
        for j in range(len(txt)):
            cos = float(img[i] @ txt[j])
            if j == y:
                z.append(scale * cos)
            else:
                z.append(scale * (cos + lam * (1.0 - float(txt[y] @ txt[j]))))
        z = np.array(z)
        losses.append(-(z[y] - (np.log(np.exp(z - z.max()).sum()) + z.max())))
    return float(np.mean(losses))


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.3, 1.5])
def test_mms_matches_an_independent_computation(lam):
    g = torch.Generator().manual_seed(int(lam * 10))
    img, txt = torch.randn(13, 8, generator=g), torch.randn(6, 8, generator=g)
    labels = torch.randint(6, (13,), generator=g)
    got = mms_loss(img, txt, labels, lam, 17.5).item()
    assert got == pytest.approx(_reference_mms(img, txt, labels, lam, 17.5), rel=1e-5)


def test_lambda_zero_is_exactly_cross_entropy():
    g = torch.Generator().manual_seed(1)
    img, txt, labels = torch.randn(9, 5, generator=g), torch.randn(4, 5, generator=g), torch.randint(4, (9,), generator=g)
    ce = F.cross_entropy(30.0 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T, labels)
    assert torch.equal(mms_loss(img, txt, labels, 0.0, 30.0), ce)


def test_margins_grow_with_dissimilarity_and_leave_the_target_alone():
    txt = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    m = class_margins(txt, 0.3)
    assert torch.all(m.diagonal() == 0)
    assert m[0, 1] == pytest.approx(0.3 * (1 - 0.8)) and m[0, 2] == pytest.approx(0.6)
    assert m[0, 1] < m[0, 2]          # similar classes get small margins
    img = torch.randn(3, 2)
    labels = torch.tensor([0, 1, 2])
    z0, z = margin_logits(img, txt, labels, 0.0, 10.0), margin_logits(img, txt, labels, 0.3, 10.0)
    assert torch.allclose(z.gather(1, labels[:, None]), z0.gather(1, labels[:, None]))
    assert torch.all(z >= z0 - 1e-6)


def test_official_feature_shift_gives_the_same_softmax():
    """The official code feeds (f - lambda * t_y) . t_j; that differs from MMS by a per-row constant."""
    g = torch.Generator().manual_seed(3)
    img, txt = F.normalize(torch.randn(7, 6, generator=g), dim=-1), F.normalize(torch.randn(5, 6, generator=g), dim=-1)
    labels = torch.randint(5, (7,), generator=g)
    lam, scale = 0.3, 20.0
    shifted = scale * (img - lam * txt[labels]) @ txt.T
    assert torch.allclose(F.log_softmax(shifted, 1), F.log_softmax(margin_logits(img, txt, labels, lam, scale), 1),
                          atol=1e-5)


def test_invalid_inputs_raise_clear_errors():
    img, txt, labels = torch.randn(4, 3), torch.randn(2, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="margin_lambda must be finite and >= 0"):
        mms_loss(img, txt, labels, -0.1, 10.0)
    with pytest.raises(ValueError, match="margin_lambda must be finite and >= 0"):
        class_margins(txt, -1)
    with pytest.raises(ValueError, match="image_features must be N x D and labels N"):
        mms_loss(img, txt, labels[:3], 0.3, 10.0)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        mms_loss(img, torch.randn(2, 5), labels, 0.3, 10.0)
    with pytest.raises(ValueError, match="class ids in 0..1"):
        mms_loss(img, txt, torch.tensor([0, 1, 2, 0]), 0.3, 10.0)


def test_precomputed_margins_give_the_same_loss():
    g = torch.Generator().manual_seed(7)
    img, txt, labels = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g), torch.randint(3, (6,), generator=g)
    assert torch.equal(mms_loss(img, txt, labels, 0.3, 12.0),
                       mms_loss(img, txt, labels, 0.3, 12.0, margins=class_margins(txt, 0.3)))


def test_mms_refuses_float_labels_and_margins_of_another_class_count():
    import pytest
    import torch
    from clipood_kit.methods import class_margins, mms_loss
    f, t = torch.randn(4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"labels must be integer class ids, got dtype torch.float32: pass labels.long\(\)"):
        mms_loss(f, t, torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.3, 100.0)
    with pytest.raises(ValueError, match=r"margins have shape \(3, 3\) but there are 5 classes"):
        mms_loss(f, t, torch.tensor([0, 1, 2, 3]), 0.3, 100.0, margins=class_margins(torch.randn(3, 8), 0.3))
    assert torch.isfinite(mms_loss(f, t, torch.tensor([0, 1, 2, 4]), 0.3, 100.0, margins=class_margins(t, 0.3)))
