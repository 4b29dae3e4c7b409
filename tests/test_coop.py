"""CoOp (methods/coop.py) against the official prompt assembly (KaiyangZhou/CoOp `trainers/coop.py`,
`PromptLearner`, class token at the end) and trained end to end with both towers frozen."""
import pytest
import torch
import torch.nn.functional as F

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.encoding import state_classifier
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import evaluate_state
from clipood_kit.methods import Method, compose
from clipood_kit.methods.coop import PromptContext
from clipood_kit.engine.settings import set_method_fields


def _setup(**kw):
    return prepare(build_experiment(per_cell=3, cache_dir="off", **kw))


def test_initialised_from_a_photo_of_a_it_is_clip_s_own_prompt():
    """With the context initialised from the embeddings of 'a photo of a', every class feature equals CLIP's
    encoding of the prompt 'a photo of a CLASS.' (the official init: embedding[0, 1 : 1 + n_ctx])."""
    setup = _setup(method="coop")
    method = Method(setup.cfg.method)
    model = setup.prepare_method(method)
    ours = F.normalize(model.class_features(), dim=-1)
    with torch.no_grad():
        clip = setup.zero_shot.loaded.model
        direct = F.normalize(clip.encode_text(setup.zero_shot.loaded.tokenizer(
            [f"a photo of a {c}." for c in setup.dataset.classes])).float(), dim=-1)
    assert torch.allclose(ours, direct, atol=1e-5)
    assert model.parts["coop"].ctx.shape == (4, clip.token_embedding.weight.shape[1])


def test_the_prompt_is_sos_then_context_then_the_class_tokens():
    """A transcription of the official forward: cat([prefix (n_cls, 1, dim), ctx (n_cls, n_ctx, dim),
    suffix (n_cls, *, dim)], dim=1), with the generic context expanded over the classes."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (3, 9), generator=g)
    embeddings = torch.randn(3, 9, 8, generator=g)
    ctx = torch.randn(2, 8, generator=g)
    prompts = PromptContext(ctx, tokens).prompts(embeddings)
    for c in range(3):
        assert torch.equal(prompts[c, 0], embeddings[c, 0])                 # SOS
        assert torch.equal(prompts[c, 1:3], ctx)                            # the shared context
        assert torch.equal(prompts[c, 3:], embeddings[c, 3:])               # CLASS . EOS padding
    specific = torch.randn(3, 2, 8, generator=g)
    assert torch.equal(PromptContext(specific, tokens).prompts(embeddings)[:, 1:3], specific)


def test_only_the_context_trains_and_new_classes_use_it():
    setup = _setup(steps=4, batch_size=8, lr=2e-3, method="coop")
    r = run_method(setup, progress=False)
    last = r["states"]["last"]
    assert set(last) == {"parts.coop.ctx", "parts.coop.tokens"}
    method = Method(setup.cfg.method)
    zero = setup.prepare_method(method).trained_state()
    assert not torch.equal(zero["parts.coop.ctx"], last["parts.coop.ctx"])
    moved, start = state_classifier(setup, last), state_classifier(setup, zero)
    assert not torch.allclose(moved[setup.split.new_ids], start[setup.split.new_ids])   # the new classes' prompts moved too
    assert evaluate_state(setup, last) == r["models"]["last"]


def test_random_class_specific_context_has_one_context_per_class():
    setup = _setup(method=set_method_fields(compose("coop"), {"coop.ctx_init": "", "coop.n_ctx": 3,
                                                               "coop.class_specific": True}))
    method = Method(setup.cfg.method)
    ctx = setup.prepare_method(method).parts["coop"].ctx
    assert ctx.shape[:2] == (len(setup.dataset.classes), 3) and 0.01 < float(ctx.detach().std()) < 0.03


def test_the_learned_context_is_read_against_its_start_and_the_vocabulary():
    """`studies.prompts.learned_context`: from 'a photo of a', each context vector's nearest word is its own word
    (cosine 1) before training; the movements equal 1 - cos computed here; a vocabulary larger than `max_words`
    keeps only the words near some context vector, the nearest ones among them."""
    from clipood_kit.studies.prompts import learned_context
    setup = _setup(steps=4, batch_size=8, lr=2e-3, method="coop")
    state = run_method(setup, progress=False)["states"]["last"]
    report = learned_context(setup, state, nearest=2)
    assert [row[0]["word"] for row in report["nearest_before"]] == report["init"].split()
    assert all(abs(row[0]["cosine"] - 1) < 1e-6 for row in report["nearest_before"])
    start, end = torch.tensor(report["ctx_init"]), state["parts.coop.ctx"]
    assert torch.allclose(torch.tensor(report["ctx"]), end)
    direct = 1 - F.cosine_similarity(start.double(), end.double(), dim=-1)
    assert report["ctx_moved"] == pytest.approx(direct.tolist()) and min(report["ctx_moved"]) > 0
    moved = F.normalize(state_classifier(setup, state), dim=-1)
    still = F.normalize(state_classifier(setup, {**state, "parts.coop.ctx": start}), dim=-1)
    expected = (1 - (moved * still).sum(-1)).tolist()
    assert list(report["class_moved"].values()) == pytest.approx(expected, abs=1e-6)
    assert report["base"] == [setup.dataset.classes[i] for i in setup.split.base_ids]
    small = learned_context(setup, state, nearest=2, max_words=10, near=3)
    assert len(report["vocabulary"]) > 10 and len(small["vocabulary"]) < len(report["vocabulary"])
    assert {w["word"] for row in small["nearest_after"] for w in row[:2]} <= set(small["vocabulary"])
    with pytest.raises(ValueError, match="no CoOp context"):
        learned_context(setup, {"visual.proj": torch.zeros(1)})
