"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022; official code github.com/gaopengcuhk/Tip-Adapter, `main.py`, `utils.py`).

Both encoders stay frozen. A cache model holds the few-shot training images: keys K (N x D, their normalised
image features) and values V (N x C, their one-hot labels). For a normalised test feature f (official `main.py`
lines 32-42; the cache in `utils.py` `build_cache_model`, lines 38-71):

    clip_logits  = 100 f W^T                              (W: the zero-shot classifier; 100 = CLIP's logit scale)
    affinity     = f K^T
    cache_logits = exp(-beta (1 - affinity)) V
    tip_logits   = clip_logits + alpha * cache_logits     (alpha 1.17, beta 1: the official ImageNet init)

- **Tip-Adapter** (training-free, `tip-adapter`): the cache is built, not trained; the method's run has no step.
- **Tip-Adapter-F** (`tip-adapter-f`): the keys become a learnable linear layer initialised with K (official
  lines 69-70, `adapter.weight = cache_keys.t()`), trained with cross-entropy on tip_logits (lines 91-96).

Here the scores are in cosine units, tip_logits / s with s the model's logit scale (CLIP's 100, the tiny CLIP's
own), through `PartModule.adapt_cosines`: cos'(f, c) = cos(f, t_c) + (alpha / s) cache_logits_c. The values
cover every class of the dataset, zero for the classes never trained on (the cache knows only the training
classes, as in the official few-shot setting).

Deviations, each named: the official keys average 10 augmented passes over the training set (`augment_epoch`);
here they are the training images' zero-shot features without augmentation (one pass). The official code then
searches (alpha, beta) on a validation split (`search_hp`); here they are fixed settings (`--set
tip-adapter.alpha=...`), since the bench's held-out images are its test set. Tip-Adapter-F trains with the
experiment's AdamW and cosine schedule (official: AdamW, lr 0.001, eps 1e-4, cosine over 20 epochs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.methods.base import PartConfig, MethodContext
from clipood_kit.methods.losses import CrossEntropy
from clipood_kit.models.adapted import PartModule


class CacheModel(PartModule):
    """The cache (keys N x D, values N x C, alpha, beta, the logit scale); `adapt_cosines` adds
    (alpha / scale) exp(-beta (1 - f K^T)) V to the cosines. With `learn_keys`, K is a parameter (Tip-Adapter-F)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, alpha: float, beta: float, logit_scale: float,
                 learn_keys: bool = False):
        super().__init__()
        keys = keys.detach().clone()
        if learn_keys:
            self.keys = nn.Parameter(keys)
        else:
            self.register_buffer("keys", keys)
        self.register_buffer("values", values.detach().clone())
        self.register_buffer("hyper", torch.tensor([float(alpha), float(beta), float(logit_scale),
                                                    float(learn_keys)]))

    def adapt_cosines(self, features, cosines, class_features, text=None):
        alpha, beta, scale = self.hyper[0], self.hyper[1], self.hyper[2]
        affinity = features @ self.keys.to(features.dtype).T
        cache = torch.exp(-beta * (1 - affinity)) @ self.values.to(features.dtype)
        return cosines + (alpha / scale) * cache

    @classmethod
    def from_state(cls, state) -> "CacheModel":
        alpha, beta, scale, learn = state["hyper"].tolist()
        return cls(state["keys"], state["values"], alpha, beta, scale, bool(learn))


@dataclass
class TipAdapterConfig(PartConfig):
    kind: ClassVar[str] = "tip-adapter"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = ("Tip-Adapter: a cache of the few-shot training features added to the zero-shot "
                              "logits; train_keys = Tip-Adapter-F")
    trains: ClassVar[Tuple[str, ...]] = ()                 # both towers frozen
    module: ClassVar[Optional[type]] = CacheModel
    reads_training_features: ClassVar[bool] = True          # the cache is the training images' features
    alpha: float = 1.17              # official configs/imagenet.yaml init_alpha
    beta: float = 1.0                # official init_beta
    train_keys: bool = False         # True: Tip-Adapter-F (the keys learn)

    @property
    def training_free(self) -> bool:
        return not self.train_keys

    def validate(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"tip-adapter.{name} must be finite and >= 0, got {value!r}")

    def build(self) -> "TipAdapter":
        return TipAdapter(self)


class TipAdapter(CrossEntropy):
    """The cache built from the training images' zero-shot features; Tip-Adapter-F trains its keys with
    cross-entropy on the adapted scores (`losses.CrossEntropy` on `Batch.cosines`)."""

    def model_module(self, context: MethodContext) -> CacheModel:
        train = context.training_features_for(self.cfg.kind)
        keys = F.normalize(train["features"].float(), dim=-1)
        if len(keys) == 0:
            raise ValueError("tip-adapter needs training images for its cache; the experiment has none")
        values = F.one_hot(train["labels"].long(), len(context.class_names)).float()
        return CacheModel(keys, values, self.cfg.alpha, self.cfg.beta, context.clip.logit_scale, self.cfg.train_keys)
