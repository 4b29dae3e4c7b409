"""A toy method, written as a user adds one: focal loss (Lin et al., ICCV 2017) on CLIP's scaled cosines,
FL = -(1 - p_y)^gamma log p_y. This module plus one line in the METHODS registry is all it takes
(tests/test_toy_method.py adds that line)."""
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from clipood_kit.methods.base import Loss, PartConfig


@dataclass
class FocalConfig(PartConfig):
    kind: ClassVar[str] = "focal"
    role: ClassVar[str] = "loss"
    summary: ClassVar[str] = "focal loss -(1 - p_y)^gamma log p_y on scaled cosines"
    gamma: float = 2.0

    def validate(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"focal.gamma must be >= 0, got {self.gamma}")

    def build(self) -> "FocalLoss":
        return FocalLoss(self)


class FocalLoss(Loss):
    def loss(self, batch):
        text = F.normalize(self.run.text_features, dim=-1)
        logits = self.run.logit_scale * F.normalize(batch.features, dim=-1) @ text.T
        log_p = F.log_softmax(logits, dim=1).gather(1, batch.labels[:, None])[:, 0]
        p = log_p.exp()
        return (-(1 - p) ** self.cfg.gamma * log_p).mean(), {"p_true": p.mean().detach()}
