"""CLIP-LoRA (methods/clip_lora.py) against a transcription of the official forward (MaxZanella/CLIP-LoRA
`loralib/layers.py`: `LinearLoRA.forward` lines 186-208, `PlainMultiheadAttentionLoRA.forward_module` lines
425-517), registered by its module alone, and trained end to end with only its low-rank pairs learning."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.methods import METHODS, REGISTRY, Method
from clipood_kit.methods.clip_lora import LoRAAttention, LoRAAttentionPool, LowRankAdapters


def official_lora_linear(x, weight, bias, a, b, scaling):
    """LinearLoRA.forward without dropout: nn.Linear(x) + x @ (B @ A)^T * scaling."""
    return F.linear(x, weight, bias) + torch.matmul(x, (b @ a).transpose(0, 1)) * scaling


def official_mha_lora(mha, query, pairs, scaling, attn_mask):
    """PlainMultiheadAttentionLoRA.forward_module (batch_first input, q = k = v = query), transcribed."""
    e, h = mha.embed_dim, mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    query = query.transpose(1, 0)                                       # batch_first -> (L, N, E)
    tgt_len, bsz, _ = query.shape
    q = official_lora_linear(query, w[:e], bias[:e], *pairs["q"], scaling)
    k = official_lora_linear(query, w[e:2 * e], bias[e:2 * e], *pairs["k"], scaling)
    v = official_lora_linear(query, w[2 * e:], bias[2 * e:], *pairs["v"], scaling)
    attn_mask = attn_mask.unsqueeze(0).unsqueeze(0)                     # a 2-D mask -> (1, 1, L, S)
    q = q.view(tgt_len, bsz * h, e // h).transpose(0, 1).view(bsz, h, tgt_len, e // h)
    k = k.view(tgt_len, bsz * h, e // h).transpose(0, 1).view(bsz, h, tgt_len, e // h)
    v = v.view(tgt_len, bsz * h, e // h).transpose(0, 1).view(bsz, h, tgt_len, e // h)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, False)
    out = out.permute(2, 0, 1, 3).contiguous().view(bsz * tgt_len, e)
    out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias).view(tgt_len, bsz, e)
    return out.transpose(1, 0)


def _adapters(layer, shapes, rank=2, alpha=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for p, (d_out, d_in) in zip("qkv", shapes):
        pairs[f"{layer}__{p}__A"] = torch.randn(rank, d_in, generator=g)
        pairs[f"{layer}__{p}__B"] = torch.randn(d_out, rank, generator=g)       # non-zero: the update shows
    return LowRankAdapters(rank, alpha, 0.0, 0, torch.zeros(1, 1, 4, dtype=torch.long), "vision", pairs), pairs


def test_the_attention_equals_the_official_forward_in_training_and_merged():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(3, 7, 16)
    causal = torch.full((7, 7), float("-inf")).triu(1)                   # open_clip's text mask
    adapters, pairs = _adapters("t", [(16, 16)] * 3)
    ours = LoRAAttention(mha, adapters, "t")
    by_proj = {p: (pairs[f"t__{p}__A"], pairs[f"t__{p}__B"]) for p in "qkv"}
    reference = official_mha_lora(mha, x, by_proj, 1.0 / math.sqrt(2), causal)
    adapters.train()
    assert torch.allclose(ours(x, x, x, attn_mask=causal)[0], reference, atol=1e-5)
    adapters.eval()                                                      # merged: W + s B A
    assert torch.allclose(ours(x, x, x, attn_mask=causal)[0], reference, atol=1e-5)
    # with B = 0 (the official init) the layer is the frozen one
    for p in "qkv":
        adapters.pairs[f"t__{p}__B"].data.zero_()
    assert torch.allclose(ours(x, x, x, attn_mask=causal)[0], mha(x, x, x, attn_mask=causal)[0], atol=1e-5)


def test_the_attention_pool_gets_the_same_update():
    from open_clip.modified_resnet import AttentionPool2d
    torch.manual_seed(0)
    pool = AttentionPool2d(4, 32, 4, 24)
    x = torch.randn(2, 32, 4, 4)
    adapters, pairs = _adapters("p", [(32, 32)] * 3, alpha=2.0)
    ours = LoRAAttentionPool(pool, adapters, "p")
    s = 2.0 / math.sqrt(2)
    merged = {p: getattr(pool, f"{p}_proj").weight + s * pairs[f"p__{p}__B"] @ pairs[f"p__{p}__A"] for p in "qkv"}
    t = x.reshape(2, 32, 16).permute(2, 0, 1)
    t = torch.cat([t.mean(dim=0, keepdim=True), t], dim=0) + pool.positional_embedding[:, None, :]
    reference, _ = F.multi_head_attention_forward(
        query=t, key=t, value=t, embed_dim_to_check=32, num_heads=4, q_proj_weight=merged["q"],
        k_proj_weight=merged["k"], v_proj_weight=merged["v"], in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False)
    for mode in (True, False):
        adapters.train(mode)
        assert torch.allclose(ours(x), reference[0], atol=1e-4, rtol=1e-4), (ours(x) - reference[0]).abs().max()


def test_registered_by_its_module_with_its_official_budget():
    entry = REGISTRY["clip-lora"]
    assert entry.module == "clipood_kit.methods.clip_lora" and set(entry.benches) == {"compare", "study"}
    assert entry.budget.steps_for(16) == 8000 and (entry.budget.lr, entry.budget.optimizer) == (2e-4, "adamw")
    from clipood_kit.studies.bench import COMPARE_METHODS
    from clipood_kit.studies.ood_study import STUDY_METHODS
    assert "clip-lora" in COMPARE_METHODS and "clip-lora" in STUDY_METHODS
    assert METHODS["clip-lora"].describe() == "clip-lora"


def test_only_the_low_rank_pairs_train_starting_at_clip():
    setup = prepare(build_experiment(per_cell=3, cache_dir="off", steps=12, batch_size=16, lr=2e-3,
                                     method="clip-lora"))
    method = Method(setup.cfg.method)
    model = setup.prepare_method(method)
    layers = {k.split("__")[0] for k in model.parts["clip-lora"].pairs}
    assert any(k.startswith("visual") for k in layers) and any(k.startswith("text") for k in layers)
    model.eval()
    with torch.no_grad():                  # B = 0: the adapted model is CLIP
        assert torch.allclose(F.normalize(model.class_features(), dim=-1),
                              F.normalize(setup.zero_shot.text_features.to(model.frozen_class_features.dtype), dim=-1), atol=1e-4)
    r = run_method(setup, progress=False)
    last = r["states"]["last"]
    assert all(k.startswith("parts.clip-lora.") for k in last)
    moved = [k for k in last if k.endswith("__B") and last[k].abs().sum() > 0]
    assert moved and r["history"][-1]["loss"] < r["history"][0]["loss"]
    # a scored state rebuilds the adapters from the state alone, and its scores differ from zero-shot's
    from clipood_kit.engine.scoring import evaluate_state, zero_shot_scores
    assert evaluate_state(setup, last)["accuracy"] != zero_shot_scores(setup)["accuracy"]


def test_bad_settings_are_refused_by_name():
    from clipood_kit.engine.settings import set_method_fields
    from clipood_kit.methods import compose
    for key, value, match in (("clip-lora.rank", 0, "rank must be"), ("clip-lora.dropout", 1.0, "dropout must be"),
                              ("clip-lora.encoders", "audio", "encoders must be")):
        with pytest.raises(ValueError, match=match):
            set_method_fields(compose("clip-lora"), {key: value}).validate()
