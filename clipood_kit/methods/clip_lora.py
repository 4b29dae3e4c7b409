"""CLIP-LoRA, low-rank adaptation of both towers (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of
Vision-Language Models", CVPRW 2024; official code github.com/MaxZanella/CLIP-LoRA).

Every attention layer of both towers keeps its frozen weights and learns a low-rank update of its query, key and
value projections (official `loralib/utils.py` `apply_lora`, lines 107-134: `--encoder both`, `--position all`,
`--params q k v`):

    W x  ->  W x + s * B A dropout(x),     A: r x d_in,  B: d_out x r,  s = alpha / sqrt(r)

(`loralib/layers.py`: `LoRALayer` line 42 `scaling = lora_alpha / math.sqrt(r)`; `LinearLoRA.forward` lines
197-208: the dropout on the input of the low-rank path only; `init_lora_param` lines 63-68: A as nn.Linear's
default, kaiming_uniform(a=sqrt(5)), B zeros, so training starts at CLIP). r = 2, alpha = 1, dropout 0.25
(`run_utils.py` lines 35-37). The class features come from the adapted text tower every step, the loss is
cross-entropy at CLIP's logit scale (`lora.py` lines 94-113). For evaluation the update is merged into the
weights, W' = W + s B A (`LoRALayer.lora_train(False)` -> `add_lora_data`), which gives the same outputs.

The official code splits each `nn.MultiheadAttention` into separate q, k and v projections
(`PlainMultiheadAttentionLoRA`, lines 340-517); here `LoRAAttention` computes the same attention from the packed
frozen weights and this module's low-rank pairs. open_clip's ModifiedResNet image tower (the tiny CLIP's) has one
attention layer, its attention pool (`AttentionPool2d`: q, k, v and output projections): it gets the same
update there (`LoRAAttentionPool`); the official code targets ViT towers only.

HF `peft` was weighed and not used: its LoRA for `nn.MultiheadAttention` adapts the packed input projection with
one low-rank pair across q, k and v (rank r for all three together), where CLIP-LoRA gives each projection its own
rank-r pair, and its default scaling is alpha / r (rsLoRA's alpha / sqrt(r) is an option). Writing the two
attention layers keeps the official rule exactly, with no new dependency.

The adapters are this part's module (`parts.clip-lora.*` in the run's state: only they train); `install` wires
them into the model's own copies of the towers when the model is built (`PartModule.install`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.methods.base import MethodConfig, PartConfig, MethodContext
from clipood_kit.methods.losses import CrossEntropy
from clipood_kit.methods.registry import FewShotBudget, register
from clipood_kit.models.adapted import PartModule, ensemble_text_features, tokenize_prompts

PROJECTIONS = ("q", "k", "v")


def low_rank(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, dropout: float,
             training: bool) -> torch.Tensor:
    """s * dropout(x) A^T B^T: the low-rank path of a projection."""
    return (F.dropout(x, dropout, training) @ a.T.to(x.dtype) @ b.T.to(x.dtype)) * scaling


class LowRankAdapters(PartModule):
    """The low-rank pairs of every adapted projection, by layer: `pairs['<layer>__<q|k|v>__A' / '__B']`; the
    rank, alpha and dropout ride along as a buffer so a saved state rebuilds the module (`from_state`)."""

    needs_text_tower = True

    def __init__(self, rank: int, alpha: float, dropout: float, seed: int, tokens: torch.Tensor,
                 encoders: str = "both", pairs: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__()
        self.pairs = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in (pairs or {}).items()})
        self.register_buffer("settings", torch.tensor([float(rank), float(alpha), float(dropout)]))
        self.register_buffer("tokens", tokens.detach().clone().long())        # T x C x L class prompts
        self.encoders, self.seed = encoders, seed
        self.adapts_text = False

    @property
    def rank(self) -> int:
        return int(self.settings[0])

    @property
    def scaling(self) -> float:
        return float(self.settings[1]) / math.sqrt(self.rank)

    @property
    def dropout(self) -> float:
        return float(self.settings[2])

    # -- wiring ----------------------------------------------------------------------------------------------
    def install(self, visual: nn.Module, text) -> None:
        targets: List[Tuple[str, nn.Module, str]] = []
        if self.encoders in ("vision", "both"):
            targets += [("visual." + n, m, "pool" if _is_attention_pool(m) else "mha")
                        for n, m in visual.named_modules() if isinstance(m, nn.MultiheadAttention) or _is_attention_pool(m)]
        if self.encoders in ("text", "both") and text is not None:
            transformer = text.clip.transformer
            targets += [("text." + n, m, "mha") for n, m in transformer.named_modules()
                        if isinstance(m, nn.MultiheadAttention)]
            self.adapts_text = True
        if not targets:
            raise ValueError("clip-lora found no attention layer to adapt in this model's towers")
        gen = torch.Generator().manual_seed(self.seed)
        for name, module, kind in targets:
            layer = re.sub(r"[^0-9A-Za-z]+", "_", name)
            for p, (d_out, d_in) in zip(PROJECTIONS, _projection_shapes(module, kind)):
                a_key, b_key = f"{layer}__{p}__A", f"{layer}__{p}__B"
                if a_key not in self.pairs:                                 # a fresh module: official init
                    weight = next(module.parameters())
                    a = torch.empty(self.rank, d_in)
                    bound = 1 / math.sqrt(d_in)                # kaiming_uniform_(a=sqrt(5)) on an r x d_in matrix
                    a.uniform_(-bound, bound, generator=gen)
                    self.pairs[a_key] = nn.Parameter(a.to(weight.device, weight.dtype))
                    self.pairs[b_key] = nn.Parameter(torch.zeros(d_out, self.rank, device=weight.device,
                                                                 dtype=weight.dtype))
            wrapper = (LoRAAttentionPool if kind == "pool" else LoRAAttention)(module, self, layer)
            _replace(visual if name.startswith("visual.") else text.clip.transformer, name.split(".", 1)[1], wrapper)

    def project(self, layer: str, which: str, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        """W x + b + s B A dropout(x) while training; with the update merged, (W + s B A) x + b, in evaluation."""
        a, b = self.pairs[f"{layer}__{which}__A"], self.pairs[f"{layer}__{which}__B"]
        if self.training:
            return F.linear(x, weight, bias) + low_rank(x, a, b, self.scaling, self.dropout, True)
        return F.linear(x, weight + (b @ a).to(weight.dtype) * self.scaling, bias)

    # -- the class features: through the adapted text tower --------------------------------------------------
    def adapt_classes(self, class_features: torch.Tensor, text=None) -> torch.Tensor:
        if not self.adapts_text:
            return class_features
        t, c, n = self.tokens.shape
        flat = self.tokens.reshape(t * c, n)
        features = text.encode_embedded(text.embed(flat), flat).float()
        return ensemble_text_features(features.reshape(t, c, -1)).to(class_features.dtype)

    @classmethod
    def from_state(cls, state) -> "LowRankAdapters":
        rank, alpha, dropout = (float(v) for v in state["settings"])
        pairs = {k[len("pairs."):]: v for k, v in state.items() if k.startswith("pairs.")}
        encoders = ("both" if any(k.startswith("text") for k in pairs) and any(k.startswith("visual") for k in pairs)
                    else "text" if any(k.startswith("text") for k in pairs) else "vision")
        return cls(int(rank), alpha, dropout, 0, state["tokens"], encoders, pairs)


def _is_attention_pool(module: nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "c_proj", "positional_embedding"))


def _projection_shapes(module: nn.Module, kind: str) -> List[Tuple[int, int]]:
    if kind == "pool":
        return [tuple(getattr(module, f"{p}_proj").weight.shape) for p in PROJECTIONS]
    e = module.embed_dim
    return [(e, e)] * 3


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class LoRAAttention(nn.Module):
    """`nn.MultiheadAttention` (q, k, v packed in `in_proj_weight`) with the adapters' low-rank updates on q, k and
    v. It takes over the frozen layer's parameters under their own names, so the tower's state keeps its keys;
    the adapters are referenced, not owned (their state is the part's)."""

    def __init__(self, base: nn.MultiheadAttention, adapters: LowRankAdapters, layer: str):
        super().__init__()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise ValueError("clip-lora adapts CLIP's attention (q, k, v of one width, no bias_k, no zero attention)")
        self.embed_dim, self.num_heads, self.batch_first = base.embed_dim, base.num_heads, base.batch_first
        self.in_proj_weight, self.in_proj_bias, self.out_proj = base.in_proj_weight, base.in_proj_bias, base.out_proj
        self.__dict__["adapters"] = adapters          # not a submodule: its parameters stay the part's
        self.layer = layer

    def forward(self, query, key, value, need_weights: bool = False, attn_mask=None, key_padding_mask=None,
                **_):
        e, h = self.embed_dim, self.num_heads
        if key_padding_mask is not None:
            raise NotImplementedError("clip-lora's attention takes no key_padding_mask (CLIP's towers use none)")
        if not self.batch_first:                       # (L, N, E) -> (N, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        w, bias = self.in_proj_weight, self.in_proj_bias
        qkv = [self.adapters.project(self.layer, p, x, w[i * e:(i + 1) * e], None if bias is None else bias[i * e:(i + 1) * e])
               for i, (p, x) in enumerate(zip(PROJECTIONS, (query, key, value)))]
        n, lq, _ = qkv[0].shape
        q, k, v = (x.reshape(n, -1, h, e // h).transpose(1, 2) for x in qkv)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:          # MHA's bool mask: True = not attended
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
            attn_mask = attn_mask.to(q.dtype)
            attn_mask = attn_mask.view(n, h, lq, -1) if attn_mask.dim() == 3 else attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, e))
        return (out if self.batch_first else out.transpose(0, 1)), None


class LoRAAttentionPool(nn.Module):
    """open_clip's `AttentionPool2d` (a ModifiedResNet's last layer) with the low-rank updates on q, k and v."""

    def __init__(self, base: nn.Module, adapters: LowRankAdapters, layer: str):
        super().__init__()
        self.positional_embedding, self.num_heads = base.positional_embedding, base.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.c_proj = base.q_proj, base.k_proj, base.v_proj, base.c_proj
        self.__dict__["adapters"] = adapters
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)                 # N x HW x C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        q, k, v = (self.adapters.project(self.layer, p, x, getattr(self, f"{p}_proj").weight,
                                         getattr(self, f"{p}_proj").bias) for p in PROJECTIONS)
        n, length, e = q.shape
        h = self.num_heads
        q, k, v = (t.reshape(n, length, h, e // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)                   # the mean token's query only
        return self.c_proj(out.transpose(1, 2).reshape(n, e))


@dataclass
class CLIPLoRAConfig(PartConfig):
    kind: ClassVar[str] = "clip-lora"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "CLIP-LoRA: low-rank updates of q, k, v in both towers' attention, cross-entropy"
    trains: ClassVar[Tuple[str, ...]] = ()          # the towers stay frozen: only the low-rank pairs learn
    module: ClassVar[Optional[type]] = LowRankAdapters
    rank: int = 2                    # run_utils.py --r
    alpha: float = 1.0               # --alpha
    dropout: float = 0.25            # --dropout_rate
    encoders: str = "both"           # --encoder: text, vision or both

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"clip-lora.rank must be an integer >= 1, got {self.rank!r}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"clip-lora.alpha must be finite and > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"clip-lora.dropout must be in [0, 1), got {self.dropout}")
        if self.encoders not in ("text", "vision", "both"):
            raise ValueError(f"clip-lora.encoders must be text, vision or both, got {self.encoders!r}")

    def build(self) -> "CLIPLoRA":
        return CLIPLoRA(self)


class CLIPLoRA(CrossEntropy):
    """Cross-entropy on the adapted model's class features (`losses.CrossEntropy`)."""

    def model_module(self, context: MethodContext) -> LowRankAdapters:
        tokens = tokenize_prompts(context.clip.tokenize, context.class_names, context.templates)
        return LowRankAdapters(self.cfg.rank, self.cfg.alpha, self.cfg.dropout, context.part_seed(self.cfg.kind),
                               tokens, self.cfg.encoders)


# run_utils.py: --n_iters 500 (line 29) x --shots, --batch_size 32 (30), --lr 2e-4 (28); lora.py lines 73-76: AdamW
# (weight decay 0.01, betas 0.9 / 0.999) and CosineAnnealingLR over every iteration (eta_min 1e-6; here 0)
register(MethodConfig("clip-lora", CLIPLoRAConfig()), "adapter", ("compare", "study"),
         FewShotBudget({1: 0}, 32, 2e-4, optimizer="adamw", schedule="cosine", weight_decay=0.01, steps_per_shot=500,
                       source="MaxZanella/CLIP-LoRA run_utils.py lines 28-37, lora.py lines 73-76"))
