"""FLYP, "Finetune Like You Pretrain" (Goyal et al., CVPR 2023; official code github.com/locuslab/FLYP).

Fine-tune both towers with CLIP's own contrastive loss, the class names' prompts standing in for captions
(official `src/models/flyp_loss.py` lines 59-105 with `clip/loss.py` `ClipLoss.forward`, lines 193-208, the
path without ground labels): for a batch of B images x_i with labels y_i and their prompts' text features
t_i = text(prompts of y_i),

    L = 1/2 [ CE(s F T^T, arange(B)) + CE(s T F^T, arange(B)) ],   F, T the normalised features (B x D)

so each image is pulled to its own class prompt and pushed from the other images' prompts (two images of one
class in a batch are each other's negatives, as in the official code). Evaluation is zero-shot with the
fine-tuned towers (the classifier is the fine-tuned text tower's prompt ensemble).

How this bench adapts it (say so when you compare):
- t_i is the class's template ensemble from the model's text tower (`AdaptedCLIP.class_features`); the official
  code pairs each image with one caption of its class drawn from the dataset's templates.
- The logit scale stays CLIP's (the official code trains it with the model).
- Under k processes each process's loss uses its own share of the batch as negatives (the official code gathers
  the features of every process first), so a k-process run is not the 1-process run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Tuple

import torch
import torch.nn.functional as F

from clipood_kit.methods.base import Batch, Loss, Metrics, PartConfig


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: float) -> torch.Tensor:
    """1/2 [CE(s F T^T, i) + CE(s T F^T, i)] over a batch of paired, normalised features (the module docstring)."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@dataclass
class FLYPConfig(PartConfig):
    kind: ClassVar[str] = "flyp"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "FLYP: CLIP's contrastive loss between images and their class prompts, both towers"
    trains: ClassVar[Tuple[str, ...]] = ("image", "text")

    def build(self) -> "FLYP":
        return FLYP(self)


class FLYP(Loss):
    def loss(self, batch: Batch) -> Tuple[torch.Tensor, Metrics]:
        images = F.normalize(batch.features, dim=-1)
        texts = F.normalize(batch.class_features[batch.labels], dim=-1)
        return clip_contrastive_loss(images, texts, self.run.logit_scale), {}
