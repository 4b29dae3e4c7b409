"""CAR-FT, context-aware robust fine-tuning (Mao et al., IJCV 2024, arXiv 2211.16175; no official code): the
context KL regulariser part (`context-kl`).

Context classifier: for each of M prompt templates m, w_m = norm(mean_c norm(g(template_m(c)))), the
normalised mean over the training classes of the template's normalised text features. Context distribution:
p(x; theta) = softmax(tau * W_ctx f). Penalty = weight * KL(p(x; theta_0) || p(x; theta)), theta_0 the frozen
pre-trained image encoder, tau CLIP's logit scale (the direction and temperature of the best available
re-implementations, docs/methods.md). At weight 0 the method is its loss alone; at step 0, theta = theta_0 and
the KL is 0.

The registry composes it as `car-ft` (CE + KL), `car-ft-mms` (MMS + KL) and `car-ft-clipood` (MMS + KL + BMA).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F

from clipood_kit.models.adapted import context_features
from clipood_kit.methods.base import Batch, Metrics, PartConfig, MethodContext, Regulariser, RunContext
from clipood_kit.methods.losses import reference_kl


@dataclass
class ContextKLConfig(PartConfig):
    kind: ClassVar[str] = "context-kl"
    role: ClassVar[str] = "regulariser"
    summary: ClassVar[str] = "CAR-FT: weight * KL(p_ctx(x; theta_0) || p_ctx(x; theta)) over the prompt templates"
    weight: float = 1.0

    def validate(self) -> None:
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"context-kl.weight must be finite and >= 0, got {self.weight}")

    def build(self) -> "ContextKL":
        return ContextKL(self)


class ContextKL(Regulariser):
    context_features: Optional[torch.Tensor] = None     # M x D, built by prepare() or set by hand

    def check(self, context: MethodContext) -> None:
        if len(context.templates) < 2:
            raise ValueError(f"context-kl (CAR-FT) needs at least 2 prompt templates (its context classifier has "
                             f"one row per template); this experiment has {len(context.templates)}: give more with "
                             f"--set templates=... or use a model with a template ensemble")

    def prepare(self, context: MethodContext) -> None:
        """The context classifier of the experiment's templates over the training classes
        (`models.adapted.context_features`, CAR-FT Eq. 6)."""
        names = [context.class_names[i] for i in context.train_class_ids]
        per_template = torch.stack([context.clip.encode_prompts([t.format(c) for c in names]) for t in context.templates])
        self.context_features = context_features(per_template).cpu()

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        if self.context_features is None or len(self.context_features) < 2:
            raise ValueError("context-kl (CAR-FT) needs context features of at least 2 prompt templates: call "
                             "method.prepare(setup) with an experiment of 2 or more templates")
        self.context = F.normalize(self.context_features.to(run.device, run.text_features.dtype), dim=-1)
        self.frozen = copy.deepcopy(run.model).eval().requires_grad_(False)

    def penalty(self, batch: Batch) -> Tuple[Optional[torch.Tensor], Metrics]:
        if self.cfg.weight == 0:
            return None, {}
        self.frozen.to(batch.images.device)
        with torch.no_grad():
            f0 = self.frozen.image_features(batch.images)
        kl = reference_kl(f0, batch.features, self.context, self.run.logit_scale)
        return self.cfg.weight * kl, {"context_kl": kl.detach()}
