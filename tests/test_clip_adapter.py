"""CLIP-Adapter (methods/clip_adapter.py) against a transcription of the official forward (gaopengcuhk/CLIP-Adapter
`clip_adapter.py` lines 55-67 and 100-113), and trained end to end with both towers frozen."""
import numpy as np
import torch

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import evaluate_state
from clipood_kit.methods.clip_adapter import ImageAdapter


def official_logits(image_features, text_features, w1, w2, logit_scale, ratio=0.2):
    """numpy transcription: x = ReLU(ReLU(f W1^T) W2^T); f = ratio x + (1 - ratio) f; both normalised; scale f t^T."""
    x = np.maximum(np.maximum(image_features @ w1.T, 0) @ w2.T, 0)
    f = ratio * x + (1 - ratio) * image_features
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    t = text_features / np.linalg.norm(text_features, axis=-1, keepdims=True)
    return logit_scale * f @ t.T


def test_the_adapter_is_the_official_residual_bottleneck():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(7, 16, generator=g, dtype=torch.float64), torch.randn(5, 16, generator=g, dtype=torch.float64)
    torch.manual_seed(0)                     # the adapter's initial weights: independent of the tests run before
    adapter = ImageAdapter(16, reduction=4, ratio=0.2).double()
    ours = 30.0 * torch.nn.functional.normalize(adapter.adapt_image(f), dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    w1, w2 = adapter.fc[0].weight.detach().numpy(), adapter.fc[2].weight.detach().numpy()
    assert w1.shape == (4, 16) and w2.shape == (16, 4) and adapter.fc[0].bias is None
    np.testing.assert_allclose(ours.detach().numpy(), official_logits(f.numpy(), t.numpy(), w1, w2, 30.0), atol=1e-7)
    rebuilt = ImageAdapter.from_state(adapter.state_dict())
    rebuilt.load_state_dict(adapter.state_dict())
    assert torch.equal(rebuilt.double().adapt_image(f), adapter.adapt_image(f))


def test_only_the_adapter_trains_and_its_state_scores_as_the_run():
    setup = prepare(build_experiment(per_cell=3, steps=4, batch_size=8, lr=1e-3, method="clip-adapter",
                                     cache_dir="off"))
    r = run_method(setup, progress=False)
    last = r["states"]["last"]
    assert last and all(k.startswith("parts.clip-adapter.") for k in last)      # both towers frozen
    assert r["trains"] == ["parts.clip-adapter"]
    assert evaluate_state(setup, last) == r["models"]["last"]
    assert r["history"][-1]["loss"] != r["history"][0]["loss"]
