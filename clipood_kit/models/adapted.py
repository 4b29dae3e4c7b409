"""The model a method trains and scores: CLIP's image tower, its text tower, and the method parts' own modules
(heads, prompt context, adapters), as one `nn.Module`.

    image features  f = adapt_image(visual(x))                    (adapters act on f)
    class features  t = adapt_classes(ensemble(text(prompts)))    (heads and prompt context act on t)
    cosines         s = adapt_cosines(norm(f), norm(f) norm(t)^T)  (N x C; parts whose scores are not cosines
                                                                   to one C x D classifier: Tip-Adapter's cache,
                                                                   CoCoOp's image-conditioned prompts)

When the text tower does not train, `ensemble(text(prompts))` is the frozen zero-shot classifier computed once
(the template ensemble of CLIP, Radford et al. 2021, Sec. 3.1.4), so a frozen text side costs nothing per step.

The model's **state** is what trains: the entries of `state_dict()` under `visual.` (when the image tower
trains), `text.` (when the text tower trains) and `parts.KIND.` (a part's modules). Averagers, trajectories,
WiSE-FT, checkpoints and run folders all work on that state; scoring rebuilds a model from a state's keys
(`AdaptedCLIP.structure_of`).
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

State = Dict[str, torch.Tensor]
TOWERS = ("image", "text")


def ensemble_text_features(per_template: torch.Tensor) -> torch.Tensor:
    """CLIP's prompt ensemble (Radford et al. 2021, Sec. 3.1.4): T x C x D text features (one slice per template)
    -> C x D, each template's feature normalised, averaged over templates, normalised again."""
    return F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=-1)


def context_features(per_template: torch.Tensor) -> torch.Tensor:
    """CAR-FT's context classifier (Mao et al. 2024, Eq. 6): T x C x D text features -> T x D,
    w_m = norm(mean_c norm(g(template_m(c)))), one row per template."""
    return F.normalize(F.normalize(per_template, dim=-1).mean(1), dim=-1)


class TextTower(nn.Module):
    """CLIP's text tower with the tokenised class prompts (T templates x C classes x L tokens):
    `forward()` -> C x D class features, the template ensemble. Holds a copy of the CLIP model without its image
    tower, so any open_clip text tower (transformer, HF text model) encodes as `encode_text` does."""

    def __init__(self, clip: nn.Module, tokens: Optional[torch.Tensor] = None):
        super().__init__()
        visual = clip.visual
        clip.visual = None
        try:
            self.clip = copy.deepcopy(clip)
        finally:
            clip.visual = visual
        if hasattr(self.clip, "logit_scale"):
            self.clip.logit_scale.requires_grad_(False)       # the temperature stays CLIP's
        self.register_buffer("tokens", tokens, persistent=False)

    def forward(self) -> torch.Tensor:
        t, c, n = self.tokens.shape
        features = self.clip.encode_text(self.tokens.reshape(t * c, n)).float()
        return ensemble_text_features(features.reshape(t, c, -1))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (N x L x W) of token ids: the first step of open_clip's `CLIP.encode_text`."""
        if not hasattr(self.clip, "token_embedding"):
            raise ValueError(f"{type(self.clip).__name__} has no token embedding to learn prompts in (an HF text "
                             f"tower); prompt learning needs an open_clip CLIP text transformer")
        return self.clip.token_embedding(tokens).to(self.clip.transformer.get_cast_dtype())

    def encode_embedded(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of prompts given as embeddings (N x L x W), pooled at the positions `tokens` pool at:
        the rest of open_clip's `CLIP.encode_text` after the embedding lookup (positions, transformer, final
        norm, pooling, projection), so prompt learning runs the frozen tower exactly as CLIP does."""
        from open_clip.transformer import text_global_pool
        clip = self.clip
        x = embeddings + clip.positional_embedding.to(embeddings.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        if clip.text_projection is not None:
            x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        return x


class PartModule(nn.Module):
    """A part's module that is part of the model (a head, prompt context, an adapter). Override `adapt_image`
    and/or `adapt_classes` (which gets the model's text tower, frozen or not, when `needs_text_tower`), or
    `install` to work inside the towers (low-rank adapters in their attention); `from_state` rebuilds the module
    from its entries of a saved state (scoring a run's state needs no config)."""

    needs_text_tower = False

    def install(self, visual: nn.Module, text: Optional["TextTower"]) -> None:
        """Called once when the model is built, with its own copies of the towers: a module that acts inside them
        rewires their layers here, keeping its parameters its own (the towers' state stays theirs)."""

    def adapt_image(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def adapt_classes(self, class_features: torch.Tensor, text: Optional[TextTower] = None) -> torch.Tensor:
        return class_features

    def adapt_cosines(self, features: torch.Tensor, cosines: torch.Tensor, class_features: torch.Tensor,
                      text: Optional[TextTower] = None) -> torch.Tensor:
        """N x C class scores in cosine units (logits / logit scale) from the normalised image features (N x D),
        the cosines so far (N x C) and the normalised class features (C x D)."""
        return cosines

    @classmethod
    def from_state(cls, state: State) -> "PartModule":
        raise NotImplementedError


class AdaptedCLIP(nn.Module):
    """The trained model (module docstring). Build it with `AdaptedCLIP.build`."""

    def __init__(self, visual: nn.Module, class_features: torch.Tensor, text: Optional[TextTower] = None,
                 parts: Optional[Dict[str, PartModule]] = None):
        super().__init__()
        self.visual = visual
        self.text = text
        self.parts = nn.ModuleDict(parts or {})
        self.register_buffer("frozen_class_features", class_features, persistent=False)

    @classmethod
    def build(cls, clip: nn.Module, class_features: torch.Tensor, towers: Iterable[str] = ("image",),
              tokens: Optional[torch.Tensor] = None, parts: Optional[Dict[str, PartModule]] = None) -> "AdaptedCLIP":
        """A fresh model at CLIP's weights: the image tower copied (trainable when 'image' is in `towers`), the text
        tower copied with `tokens` when 'text' is in `towers` (else the frozen `class_features`, C x D), and the
        parts' modules on the image tower's device and dtype."""
        towers = set(towers)
        unknown = towers - set(TOWERS)
        if unknown:
            raise ValueError(f"unknown tower(s) {sorted(unknown)}; towers are {TOWERS}")
        visual = copy.deepcopy(clip.visual).requires_grad_("image" in towers)
        text = None
        if "text" in towers:
            if tokens is None:
                raise ValueError("training the text tower needs the tokenised class prompts (tokens)")
            text = TextTower(clip, tokens)
        elif any(m.needs_text_tower for m in (parts or {}).values()):
            text = TextTower(clip).requires_grad_(False)     # frozen: prompt learning runs through it
        param = next(visual.parameters())
        parts = {k: m.to(param.device, param.dtype) for k, m in (parts or {}).items()}
        for module in parts.values():
            module.install(visual, text)
        return cls(visual, class_features.to(param.device), text, parts)

    # -- forward ---------------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image features: the image tower, then every part's `adapt_image`."""
        return self.adapt_image(self.visual(images))

    def adapt_image(self, features: torch.Tensor) -> torch.Tensor:
        for module in self.parts.values():
            features = module.adapt_image(features)
        return features

    def class_features(self) -> torch.Tensor:
        """C x D class features (all classes): the text tower's ensemble or the frozen one, then every part's
        `adapt_classes`."""
        features = self.text() if self.text_trains else self.frozen_class_features
        for module in self.parts.values():
            features = module.adapt_classes(features, self.text)
        return features

    @property
    def text_trains(self) -> bool:
        return self.text is not None and any(p.requires_grad for p in self.text.parameters())

    def cosines(self, features: torch.Tensor, class_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """N x C class scores in cosine units: cos(f, t_c), then every part's `adapt_cosines` (module docstring).
        `features` are image features (normalised here); `class_features` default to `class_features()`."""
        f = F.normalize(features, dim=-1)
        t = F.normalize((self.class_features() if class_features is None else class_features).to(f.dtype), dim=-1)
        cosines = f @ t.T
        for module in self.parts.values():
            cosines = module.adapt_cosines(f, cosines, t, self.text)
        return cosines

    @property
    def adapts_cosines(self) -> bool:
        """True when a part changes the class scores beyond cosines to one C x D classifier."""
        return any(type(m).adapt_cosines is not PartModule.adapt_cosines for m in self.parts.values())

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(image features, class features C x D), or (image features, cosines N x C) when a part adapts the
        cosines (`adapts_cosines`): everything that trains runs here, so one `accelerator.prepare` wraps it for
        DDP."""
        features, class_features = self.image_features(images), self.class_features()
        if self.adapts_cosines:
            return features, self.cosines(features, class_features)
        return features, class_features

    @property
    def adapts_images(self) -> bool:
        return any(type(m).adapt_image is not PartModule.adapt_image for m in self.parts.values())

    @property
    def classifier_is_frozen(self) -> bool:
        """True when the class features are the frozen zero-shot ones (no text tower, no part acts on them or on
        the cosines)."""
        return not self.text_trains and not self.adapts_cosines and all(
            type(m).adapt_classes is PartModule.adapt_classes for m in self.parts.values())

    # -- the state -------------------------------------------------------------------------------------------
    def state_prefixes(self) -> Tuple[str, ...]:
        """The entries that train: 'visual.' and 'text.' when the tower trains, 'parts.' when present."""
        out = []
        if any(p.requires_grad for p in self.visual.parameters()):
            out.append("visual.")
        if self.text_trains:
            out.append("text.")
        if len(self.parts):
            out.append("parts.")
        return tuple(out)

    def trained_state(self) -> State:
        """A copy of the entries that train (the module docstring's state)."""
        prefixes = self.state_prefixes()
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def load_trained_state(self, state: State) -> None:
        """Load a state (its entries only; the rest keeps its weights); refuses entries this model lacks."""
        own = self.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ValueError(f"the state has {len(unknown)} entries this model lacks (e.g. {unknown[:3]}); it was "
                             f"saved by a model of another structure")
        self.load_state_dict(state, strict=False)

    @staticmethod
    def structure_of(state: State) -> Tuple[bool, Tuple[str, ...]]:
        """(has a text tower, part kinds) of a state, from its keys."""
        kinds = sorted({k.split(".")[1] for k in state if k.startswith("parts.")})
        return any(k.startswith("text.") for k in state), tuple(kinds)


def part_states(state: State) -> Dict[str, State]:
    """{kind: the part's entries without the 'parts.KIND.' prefix}."""
    out: Dict[str, State] = {}
    for k, v in state.items():
        if k.startswith("parts."):
            _, kind, rest = k.split(".", 2)
            out.setdefault(kind, {})[rest] = v
    return out


def tokenize_prompts(tokenizer, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """T x C x L tokens of every template filled with every class name."""
    return torch.stack([tokenizer([t.format(c) for c in class_names]) for t in templates])


__all__ = ["AdaptedCLIP", "TextTower", "PartModule", "State", "TOWERS", "ensemble_text_features", "context_features",
           "part_states",
           "tokenize_prompts"]
