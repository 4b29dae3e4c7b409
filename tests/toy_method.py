"""A toy method, written as a user adds one: focal loss (Lin et al., ICCV 2017) on CLIP's scaled cosines,
FL = -(1 - p_y)^gamma log p_y. This module plus one line in the METHODS registry is all it takes
(tests/test_toy_method.py adds that line)."""
from dataclasses import dataclass
from typing import ClassVar, Tuple

import torch
import torch.nn.functional as F

from clipood_kit.methods.base import Loss, PartConfig, Regulariser


@dataclass
class FocalConfig(PartConfig):
    kind: ClassVar[str] = "focal"
    role: ClassVar[str] = "loss"
    trains: ClassVar[Tuple[str, ...]] = ("image",)          # what it fine-tunes: the image tower
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


@dataclass
class ProbeConfig(PartConfig):
    """A regulariser with its own training module, outside the model: a linear probe riding along on the
    detached image features (weight x its cross-entropy). It shows how a part adds a module the trainer must
    prepare for DDP (tests/test_training.py: two processes train it as one does)."""

    kind: ClassVar[str] = "probe"
    role: ClassVar[str] = "regulariser"
    summary: ClassVar[str] = "a linear probe on the detached features, trained beside the model"
    weight: float = 1.0

    def build(self) -> "Probe":
        return Probe(self)


class Probe(Regulariser):
    def setup(self, run):
        super().setup(run)
        dim, classes = run.text_features.shape[1], run.text_features.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.part_seed(self.cfg.kind))
            self.head = torch.nn.Linear(dim, classes).to(run.device, run.text_features.dtype)

    def trainable_modules(self):
        return {"head": self.head}

    def penalty(self, batch):
        logits = self.head(F.normalize(batch.features.detach(), dim=-1))
        ce = F.cross_entropy(logits, batch.labels)
        return self.cfg.weight * ce, {"probe_ce": ce.detach()}
