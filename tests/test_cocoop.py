"""CoCoOp (methods/cocoop.py) against a transcription of the official forward (KaiyangZhou/CoOp
`trainers/cocoop.py`: `PromptLearner.forward` lines 144-161, `CustomCLIP.forward` lines 174-194, one image at a
time), and trained end to end with both towers frozen."""
import pytest
import torch
import torch.nn.functional as F

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.runs import run_method
from clipood_kit.methods import Method


@pytest.fixture(scope="module")
def setup(prepared_world):
    return prepared_world(build_experiment(per_cell=3, cache_dir="off", steps=4, batch_size=8, lr=2e-3, method="cocoop",
                                    settings=["far_ood_sets="]))


def official_logits(module, text, image_features, logit_scale):
    """The official loop: per image, bias = meta_net(f); ctx_shifted = ctx + bias; prompts = cat(prefix, ctx_i
    expanded over classes, suffix); text features through the text encoder; logit_scale * f @ t.T."""
    embedding = text.embed(module.tokens)
    n_ctx = module.ctx.shape[0]
    prefix, suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx:, :]
    rows = []
    for f in image_features:
        bias = module.meta_net[2](torch.relu(module.meta_net[0](f)))        # linear1, relu, linear2
        ctx_i = (module.ctx + bias).unsqueeze(0).expand(len(module.tokens), -1, -1)
        prompts = torch.cat([prefix, ctx_i, suffix], dim=1)
        t = text.encode_embedded(prompts, module.tokens)
        t = t / t.norm(dim=-1, keepdim=True)
        rows.append(logit_scale * f @ t.t())
    return torch.stack(rows)


def test_the_batched_scores_equal_the_official_per_image_loop(setup):
    method = Method(setup.cfg.method)
    model = setup.prepare_method(method).double()
    module = model.parts["cocoop"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.meta_net.parameters():                  # away from the init, so the token matters
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        f = F.normalize(torch.randn(5, setup.zero_shot.text_features.shape[1], generator=g, dtype=torch.float64), dim=-1)
        ours = setup.zero_shot.logit_scale * model.cosines(f)
        expected = official_logits(module, model.text, f, setup.zero_shot.logit_scale)
    assert torch.allclose(ours, expected, atol=1e-8)
    # the meta-net is the official one: D -> D // 16 -> W, with biases; the context starts at 'a photo of a'
    d, w = setup.zero_shot.text_features.shape[1], module.ctx.shape[1]
    assert [tuple(module.meta_net[i].weight.shape) for i in (0, 2)] == [(d // 16, d), (w, d // 16)]
    assert module.meta_net[0].bias is not None and module.meta_net[2].bias is not None
    start = setup.zero_shot.loaded.model.token_embedding(setup.zero_shot.loaded.tokenizer(["a photo of a"]))[0, 1:5].double()
    assert torch.allclose(Method(setup.cfg.method).cfg.loss.build().model_module(setup.method_context()).ctx.double(),
                          start, atol=1e-6)
    # the class features differ per image: two images, two classifiers
    assert not torch.allclose(expected[0] / f[0].norm(), expected[1] / f[1].norm())


def test_the_context_and_the_meta_net_train_with_frozen_towers(setup):
    r = run_method(setup, progress=False)
    last = r["states"]["last"]
    assert {k.split(".")[2] for k in last} == {"ctx", "tokens", "meta_net"}
    method = Method(setup.cfg.method)
    zero = setup.prepare_method(method).trained_state()
    for key in ("parts.cocoop.ctx", "parts.cocoop.meta_net.0.weight", "parts.cocoop.meta_net.2.bias"):
        assert not torch.equal(zero[key], last[key]), key
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in r["history"])
    from clipood_kit.engine.scoring import evaluate_state
    assert evaluate_state(setup, last) == r["models"]["last"]       # a state scores the same when rebuilt
