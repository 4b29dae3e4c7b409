"""CoOp, context optimisation (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022; official
code github.com/KaiyangZhou/CoOp, `trainers/coop.py`).

Both encoders stay frozen; the prompt's context words become M learnable vectors in the text tower's input
space (official `PromptLearner`, lines 60-160, class token at the end):

    prompt_c = [SOS] [v_1] ... [v_M] [CLASS_c] [. EOS ...]      (embeddings; v shared, or one set per class)
    t_c      = text_tower(prompt_c)                              (the frozen transformer, pooled at EOS)
    logits   = logit_scale * cos(f, t_c),   cross-entropy on the training classes.

- Initialisation: from the embeddings of `ctx_init` ("a photo of a", the official CTX_INIT option; M = its number
  of words, official `n_ctx = len(ctx_init.split(" "))`, `trainers/coop.py` line 75: so `n_ctx` follows `ctx_init`
  unless set, and a value that disagrees with it is refused rather than recorded unused), or, with `ctx_init=""`,
  N(0, 0.02) vectors (the official default, N_CTX = `n_ctx`). The official
  random-init prompt holds M "X" tokens only to fix the positions; here the placeholder is the word "a" (the
  tiny CLIP's vocabulary has no "X"); the placeholders' embeddings are replaced by the context, as there.
- `class_specific` (official CSC): one context per class. With `ctx_init`, every class starts from it.
- The same context serves every class, trained or not: the new classes' features come from the learned prompt
  (CoOp's base-to-new setting).
- Here the context is a part's module in the model (`models.adapted.PartModule`, `parts.coop.ctx`), run through
  the model's frozen text tower (`TextTower.encode_embedded`, which repeats open_clip's `encode_text` after the
  embedding lookup); the prefix and suffix embeddings are looked up from the frozen embedding at each call
  rather than stored (the official code stores them as buffers: the same values).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.methods.base import PartConfig, MethodContext
from clipood_kit.methods.losses import CrossEntropy
from clipood_kit.models.adapted import PartModule


class PromptContext(PartModule):
    """Learnable context vectors (M x W, or C x M x W class-specific) spliced into every class's prompt tokens
    (C x L) after the start token; `adapt_classes` returns the prompts' text features (C x D)."""

    needs_text_tower = True

    def __init__(self, ctx: torch.Tensor, tokens: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(ctx.detach().clone())
        self.register_buffer("tokens", tokens.detach().clone().long())

    def prompts(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[SOS] ctx [CLASS . EOS ...]: the official `PromptLearner.forward`, class token at the end."""
        n_cls, m = self.tokens.shape[0], self.ctx.shape[-2]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(n_cls, -1, -1)
        return torch.cat([embeddings[:, :1], ctx.to(embeddings.dtype), embeddings[:, 1 + m:]], dim=1)

    def adapt_classes(self, class_features: torch.Tensor, text=None) -> torch.Tensor:
        if text is None:
            raise ValueError("prompt context needs the model's text tower")
        with torch.no_grad():
            embeddings = text.embed(self.tokens)
        return text.encode_embedded(self.prompts(embeddings), self.tokens)

    @classmethod
    def from_state(cls, state) -> "PromptContext":
        return cls(state["ctx"], state["tokens"])


@dataclass
class CoOpConfig(PartConfig):
    kind: ClassVar[str] = "coop"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "CoOp: learnable prompt context in the frozen text tower, cross-entropy"
    trains: ClassVar[Tuple[str, ...]] = ()                 # both towers frozen: only the context learns
    module: ClassVar[Optional[type]] = PromptContext
    ctx_init: str = "a photo of a"   # official CTX_INIT; "" = random N(0, 0.02) context of n_ctx vectors
    n_ctx: int = 4                   # with random init (official N_CTX: 16; the tiny CLIP's prompts hold 12 tokens)
    class_specific: bool = False     # official CSC

    def validate(self) -> None:
        check_context(self)

    def settled(self, given) -> "CoOpConfig":
        return settle_context(self, given)

    def build(self) -> "CoOp":
        return CoOp(self)


def settle_context(cfg, given):
    """With `ctx_init`, the context has one vector per word (official CoOp): n_ctx follows it unless it was set."""
    if cfg.ctx_init.strip() and "n_ctx" not in given:
        return replace(cfg, n_ctx=len(cfg.ctx_init.split()))
    return cfg


def check_context(cfg) -> None:
    """n_ctx an integer >= 1 that agrees with ctx_init's words (CoOp and CoCoOp)."""
    if not isinstance(cfg.n_ctx, int) or isinstance(cfg.n_ctx, bool) or cfg.n_ctx < 1:
        raise ValueError(f"{cfg.kind}.n_ctx must be an integer >= 1, got {cfg.n_ctx!r}")
    words = len(cfg.ctx_init.split())
    if words and cfg.n_ctx != words:
        raise ValueError(f"{cfg.kind}.n_ctx={cfg.n_ctx} disagrees with {cfg.kind}.ctx_init {cfg.ctx_init!r} ({words} "
                         f"words: the context is one vector per word, official CoOp); for a random context of "
                         f"{cfg.n_ctx} vectors also set {cfg.kind}.ctx_init= (empty), or leave n_ctx out")


class CoOp(CrossEntropy):
    """Cross-entropy on the model's class features (`losses.CrossEntropy`), through this part's module."""

    def _prefix(self) -> str:
        return self.cfg.ctx_init.strip() or " ".join(["a"] * self.cfg.n_ctx)

    def _prompt_tokens(self, context: MethodContext) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """(every class's prompt tokens, the prefix's tokens, M = the context's vectors), each prompt whole: a
        tokenizer that refuses a prompt, one that would cut it (open_clip's BPE truncates to its context) and a
        ctx_init whose words are not one token each are refused, with the fix."""
        kind, prefix = self.cfg.kind, self._prefix()
        shown = prefix if len(prefix) <= 40 else f"{prefix[:20]}...{prefix[-12:]} ({len(prefix.split())} words)"
        try:
            tokens = context.clip.tokenize([f"{prefix} {name}." for name in context.class_names])
        except Exception as e:       # noqa: BLE001 - a prompt the tokenizer refuses is a config error
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            reason = reason if len(reason) <= 160 else f"{reason[:60]} ... {reason[-90:]}"
            raise ValueError(f"{kind} cannot build its prompts '{shown} CLASS.': {reason}") from None
        if bool((tokens[:, -1] != 0).any()):
            raise ValueError(f"{kind}'s prompts '{shown} CLASS.' fill the text tower's whole context of "
                             f"{tokens.shape[1]} tokens, so class names may be cut: lower {kind}.n_ctx or shorten "
                             f"{kind}.ctx_init")
        init = context.clip.tokenize([prefix])
        m = int((init[0] != 0).sum()) - 2                      # the prefix's own tokens, without SOS and EOS
        if m != self.cfg.n_ctx:
            raise ValueError(f"{kind}.ctx_init {self.cfg.ctx_init!r} is {m} tokens for this tokenizer, not "
                             f"{self.cfg.n_ctx} (one per word): choose a ctx_init of single-token words")
        return tokens, init, m

    def check(self, context: MethodContext) -> None:
        self._prompt_tokens(context)

    def model_module(self, context: MethodContext) -> PromptContext:
        tokens, init, m = self._prompt_tokens(context)
        if self.cfg.ctx_init.strip():
            ctx = context.clip.embed_tokens(init)[0, 1:1 + m]        # official: embedding[0, 1 : 1 + n_ctx]
            if self.cfg.class_specific:
                ctx = ctx.unsqueeze(0).repeat(len(context.class_names), 1, 1)
        else:
            width = context.clip.embed_tokens(init).shape[-1]
            shape = (len(context.class_names), m, width) if self.cfg.class_specific else (m, width)
            gen = torch.Generator().manual_seed(context.part_seed(self.cfg.kind))
            ctx = torch.randn(*shape, generator=gen) * 0.02    # official: nn.init.normal_(std=0.02)
        return PromptContext(ctx, tokens)


# -- reading a learned context ---------------------------------------------------------------------------------

def context_word_cosines(ctx: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """M x V cosine similarity of each context vector (M x W) to each word's token embedding (V x W): how CoOp's
    paper interprets a learned context (Zhou et al. 2022, Sec. 4.4: the nearest words in embedding space)."""
    return F.normalize(ctx.double(), dim=-1) @ F.normalize(embeddings.double(), dim=-1).T


def vocabulary_of(tokenizer) -> Tuple[torch.Tensor, List[str]]:
    """(token ids, words) of a tokenizer's vocabulary: the tiny CLIP's word tokenizer or open_clip's BPE one
    (its `decoder`, start and end tokens left out)."""
    if hasattr(tokenizer, "vocabulary"):
        return torch.arange(2, 2 + len(tokenizer.vocabulary)), list(tokenizer.vocabulary)
    decoder = getattr(tokenizer, "decoder", None)
    if decoder is None:
        raise ValueError(f"{type(tokenizer).__name__} exposes no vocabulary (neither `vocabulary` nor `decoder`)")
    items = sorted((i, w.replace("</w>", "")) for i, w in decoder.items() if not w.startswith("<"))
    return torch.tensor([i for i, _ in items]), [w for _, w in items]


def nearest_words(ctx: torch.Tensor, embeddings: torch.Tensor, words: Sequence[str], k: int = 3
                  ) -> List[List[Dict[str, float]]]:
    """For each context vector, its `k` nearest words by cosine: [[{'word', 'cosine'}, ...], ...]."""
    cos = context_word_cosines(ctx, embeddings)
    top = cos.topk(min(k, len(words)), dim=1)
    return [[{"word": words[int(j)], "cosine": float(c)} for c, j in zip(row_c, row_j)]
            for row_c, row_j in zip(top.values, top.indices)]
