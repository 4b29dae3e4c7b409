"""CAR-FT, context-aware robust fine-tuning (Mao et al., IJCV 2024, arXiv 2211.16175; no official code).

Context classifier: for each of M prompt templates m, w_m = norm(mean_c norm(g(template_m(c)))), the
normalised mean over classes of the template's normalised text features. Context distribution:
p(x; theta) = softmax(tau * W_ctx f). Loss = classification loss + beta * KL(p(x; theta_0) || p(x; theta)),
theta_0 the frozen pre-trained image encoder, tau CLIP's logit scale (the direction and temperature of the
best available re-implementations, docs/methods.md). At beta = 0 it is the classification loss alone; at
step 0, theta = theta_0 and the KL is 0.

Registered as `car-ft` (CE + KL), `car-ft-mms` (MMS + KL) and `car-ft-clipood` (MMS + BMA + KL).
"""
import copy

import torch
import torch.nn.functional as F

from .base import Method
from .losses import reference_kl


class CARFT(Method):
    name = "car-ft"
    inputs = ("context_features",)

    def setup(self, encoder, text_features, logit_scale, total_steps, context_features=None, **inputs):
        super().setup(encoder, text_features, logit_scale, total_steps)
        if context_features is None or len(context_features) < 2:
            raise ValueError("car-ft needs context features of at least 2 prompt templates "
                             "(the experiment's templates); pass them to the trainer")
        self.context = F.normalize(context_features.float(), dim=-1)
        self.frozen = copy.deepcopy(encoder).eval().requires_grad_(False)
        self.last_kl = 0.0

    def context_kl(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of KL(p(x; theta_0) || p(x; theta)) over the context templates."""
        self.frozen.to(images.device)
        with torch.no_grad():
            f0 = self.frozen(images)
        return reference_kl(f0, features, self.context.to(features.device), self.logit_scale)

    def loss(self, features, labels, images):
        loss = super().loss(features, labels, images)
        if self.cfg.carft_beta == 0:
            return loss
        kl = self.context_kl(features, images)
        self.last_kl = kl.item()
        return loss + self.cfg.carft_beta * kl

    def after_step(self, encoder):
        out = super().after_step(encoder)
        out["context_kl"] = self.last_kl
        return out


class CARFTMMS(CARFT):
    name = "car-ft-mms"
    margin_lambda_used = True


class CARFTCLIPood(CARFT):
    name = "car-ft-clipood"
    margin_lambda_used = True
    averager_kind = "bma"
