"""LP-FT: linear probe, then full fine-tuning (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022, Sec. 4).

Fine-tuning a pretrained encoder with a randomly initialised (or poorly fitted) head distorts the features:
the head's early gradients move the encoder before the head fits. LP-FT first trains the head alone with the
encoder frozen (the linear probe), then fine-tunes encoder and head together from that head.

Here, in one run of `steps`:
- the head is a cosine classifier over the training classes, w_c (one row per class), initialised with the
  zero-shot text features t_c (so step 0 is the zero-shot model, as for every method on this bench; the paper
  fits the probe by logistic regression from features instead); logits = logit_scale * cos(f, w_c);
- steps t < `probe` x steps: cross-entropy trains the head only (the image features are detached, so the
  image tower gets no gradient and AdamW leaves it untouched);
- the remaining steps: cross-entropy trains the image tower and the head together.
The head is part of the model state (`parts.lp-ft.weight`), so averagers, WiSE-FT and run folders carry it;
classes outside the head (new classes) keep their zero-shot text features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.methods.base import Batch, Loss, Metrics, PartConfig, MethodContext
from clipood_kit.methods.losses import mms_loss
from clipood_kit.models.adapted import PartModule


class ClassHead(PartModule):
    """Cosine classifier rows w_c for the classes `class_ids`, which replace those classes' text features."""

    def __init__(self, weight: torch.Tensor, class_ids: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("class_ids", class_ids.detach().clone().long())

    def adapt_classes(self, class_features: torch.Tensor, text=None) -> torch.Tensor:
        rows = F.normalize(self.weight, dim=-1).to(class_features.dtype)
        return class_features.index_copy(0, self.class_ids, rows)

    @classmethod
    def from_state(cls, state) -> "ClassHead":
        return cls(state["weight"], state["class_ids"])


@dataclass
class LPFTConfig(PartConfig):
    kind: ClassVar[str] = "lp-ft"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "LP-FT: cross-entropy through a class head, the head alone first (linear probe), then all"
    trains: ClassVar[Tuple[str, ...]] = ("image",)
    module: ClassVar[Optional[type]] = ClassHead
    every_parameter_every_step: ClassVar[bool] = False      # the image tower rests during the probe
    probe: float = 0.5               # share of the steps that train the head alone

    def validate(self) -> None:
        if not 0.0 <= self.probe < 1.0:
            raise ValueError(f"lp-ft.probe must be in [0, 1) (the share of steps of the linear probe), got {self.probe}")

    def build(self) -> "LPFT":
        return LPFT(self)


class LPFT(Loss):
    def model_module(self, context: MethodContext) -> ClassHead:
        ids = torch.tensor(context.train_class_ids, dtype=torch.long)
        return ClassHead(context.text_features[ids], ids)

    def loss(self, batch: Batch) -> Tuple[torch.Tensor, Metrics]:
        probing = batch.step < int(self.cfg.probe * self.run.total_steps)
        features = batch.features.detach() if probing else batch.features
        loss = mms_loss(features, batch.class_features, batch.labels, 0.0, self.run.logit_scale)
        return loss, {"probing": float(probing)}
