"""FLYP (methods/flyp.py) against a numpy transcription of the official loss (locuslab/FLYP `clip/loss.py`
`ClipLoss.forward`, lines 193-208), and trained end to end on both towers."""
import numpy as np
import torch
import torch.nn.functional as F

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.methods.flyp import clip_contrastive_loss


def official(image, text, scale):
    """numpy: logits_per_image = s I T^T, logits_per_text = s T I^T, labels arange(N), mean of the two CEs."""
    def ce(logits):
        logits = logits - logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -np.mean(log_p[np.arange(len(logits)), np.arange(len(logits))])
    return (ce(scale * image @ text.T) + ce(scale * text @ image.T)) / 2


def test_the_loss_is_the_official_clip_loss():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    ours = clip_contrastive_loss(img, txt, 30.0).item()
    assert abs(ours - official(img.numpy(), txt.numpy(), 30.0)) < 1e-10


def test_flyp_trains_both_towers():
    setup = prepare(build_experiment(per_cell=3, steps=3, batch_size=8, lr=1e-3, method="flyp", cache_dir="off"))
    r = run_method(setup, progress=False)
    last = r["states"]["last"]
    assert {k.split(".")[0] for k in last} == {"visual", "text"} and r["trains"] == ["image", "text"]
    zero = setup.model(("image", "text")).trained_state()
    for tower in ("visual.", "text."):
        assert any(not torch.equal(v, zero[k]) for k, v in last.items() if k.startswith(tower) and v.is_floating_point())
