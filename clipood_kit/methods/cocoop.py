"""CoCoOp, conditional context optimisation (Zhou et al., "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022; official code github.com/KaiyangZhou/CoOp, `trainers/cocoop.py`).

CoOp's learnable context (`methods.coop`), plus a meta-net that turns each image's normalised feature into one
token added to every context vector, so the prompts, and the class text features, differ per image (official
`PromptLearner`, lines 62-161, and `CustomCLIP.forward`, lines 174-194):

    pi(f)        = W2 ReLU(W1 f + b1) + b2              (meta-net: D -> D / 16 -> W, with biases)
    ctx_m(x)     = v_m + pi(f(x))                       (every context vector shifted by the same token)
    t_c(x)       = text_tower([SOS] ctx(x) [CLASS_c] [. EOS])
    logits(x)_c  = logit_scale * cos(f(x), t_c(x)),     cross-entropy on the training classes.

Both encoders are frozen; the context and the meta-net learn. Here the per-image scores are the part's
`adapt_cosines` (N x C, every class: all the images' prompts go through the frozen text tower in one batch, where
the official code loops over the images); `adapt_classes` gives the prompts without the image's token, for
displays only: every score conditions on the image. The meta-net's initial weights are PyTorch's Linear init
drawn from the run's seed. The official recipe trains with batch size 1 (configs/trainers/CoCoOp/
vit_b16_c4_ep10_batch1_ctxv1.yaml); here the experiment's batch size applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.methods.base import PartConfig, MethodContext
from clipood_kit.methods.coop import CoOp, PromptContext, check_context, settle_context


class ConditionalContext(PromptContext):
    """CoOp's context (M x W) and the meta-net (D -> D / 16 -> W); `adapt_cosines` scores every image against
    every class through its own prompts."""

    def __init__(self, ctx: torch.Tensor, tokens: torch.Tensor, feature_dim: int, reduction: int = 16):
        super().__init__(ctx, tokens)
        width = ctx.shape[-1]
        self.meta_net = nn.Sequential(nn.Linear(feature_dim, feature_dim // reduction), nn.ReLU(),
                                      nn.Linear(feature_dim // reduction, width))

    def conditioned_prompts(self, features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """N x C x L x W: [SOS] (v + pi(f_n)) [CLASS_c . EOS ...] for every image n and class c (official
        `PromptLearner.forward`)."""
        bias = self.meta_net(features.to(self.ctx.dtype))                     # N x W
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)                      # N x M x W
        n, (c, m) = len(features), (self.tokens.shape[0], self.ctx.shape[0])
        prefix = embeddings[:, :1].unsqueeze(0).expand(n, -1, -1, -1)        # N x C x 1 x W
        suffix = embeddings[:, 1 + m:].unsqueeze(0).expand(n, -1, -1, -1)
        return torch.cat([prefix, ctx.unsqueeze(1).expand(-1, c, -1, -1).to(embeddings.dtype), suffix], dim=2)

    def adapt_cosines(self, features, cosines, class_features, text=None):
        if text is None:
            raise ValueError("cocoop needs the model's text tower")
        with torch.no_grad():
            embeddings = text.embed(self.tokens)
        prompts = self.conditioned_prompts(features, embeddings)              # N x C x L x W
        n, c = prompts.shape[:2]
        tokens = self.tokens.unsqueeze(0).expand(n, -1, -1).reshape(n * c, -1)
        dtype = torch.promote_types(features.dtype, torch.float32)
        t = F.normalize(text.encode_embedded(prompts.reshape(n * c, *prompts.shape[2:]), tokens).to(dtype), dim=-1)
        return torch.einsum("nd,ncd->nc", features.to(dtype), t.reshape(n, c, -1)).to(cosines.dtype)

    @classmethod
    def from_state(cls, state) -> "ConditionalContext":
        hidden, dim = state["meta_net.0.weight"].shape
        module = cls(state["ctx"], state["tokens"], dim, dim // hidden)
        module.load_state_dict(state)
        return module


@dataclass
class CoCoOpConfig(PartConfig):
    kind: ClassVar[str] = "cocoop"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "CoCoOp: CoOp's context plus a meta-net token from each image, cross-entropy"
    trains: ClassVar[Tuple[str, ...]] = ()                 # both towers frozen: the context and the meta-net learn
    module: ClassVar[Optional[type]] = ConditionalContext
    ctx_init: str = "a photo of a"   # official CTX_INIT (configs/trainers/CoCoOp/*_ctxv1.yaml)
    n_ctx: int = 4                   # with random init (official N_CTX 4)
    class_specific: ClassVar[bool] = False     # CoCoOp has one context for all classes
    text_passes_per_image: ClassVar[bool] = True
    reduction: int = 16              # official meta-net: vis_dim -> vis_dim // 16 -> ctx_dim

    def validate(self) -> None:
        check_context(self)
        if not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"cocoop.reduction must be an integer >= 1, got {self.reduction!r}")

    def settled(self, given) -> "CoCoOpConfig":
        return settle_context(self, given)

    def build(self) -> "CoCoOp":
        return CoCoOp(self)


class CoCoOp(CoOp):
    """CoOp's prompts and checks; the module adds the meta-net; the loss is cross-entropy on `Batch.cosines`."""

    def check(self, context: MethodContext) -> None:
        super().check(context)
        dim = context.text_features.shape[1]
        if dim // self.cfg.reduction < 1:
            raise ValueError(f"cocoop.reduction ({self.cfg.reduction}) leaves no hidden unit for features of size "
                             f"{dim}")

    def model_module(self, context: MethodContext) -> ConditionalContext:
        plain = super().model_module(context)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.part_seed(self.cfg.kind))
            return ConditionalContext(plain.ctx.data, plain.tokens, context.text_features.shape[1], self.cfg.reduction)
