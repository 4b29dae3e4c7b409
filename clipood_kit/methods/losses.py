"""Classification losses on frozen class text features.

Margin metric softmax (MMS), CLIPood (Shu et al., ICML 2023, Sec. 3.2, Eq. 4-5): with f the normalised image
feature, t_c the normalised text feature of class c, tau the logit scale and lambda the margin weight,

    z_y = tau * cos(f, t_y)
    z_j = tau * (cos(f, t_j) + lambda * (1 - cos(t_y, t_j)))     for j != y
    loss = cross_entropy(z, y)

The margin sits inside the temperature and nothing is subtracted from the target (docs/methods.md). The
official code shifts the feature instead (f - lambda * t_y); that changes every logit of a row by the same
constant plus the margin, so the softmax is the same. lambda = 0 is plain cross-entropy fine-tuning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Tuple

import torch
import torch.nn.functional as F

from clipood_kit.methods.base import Batch, Loss, Metrics, PartConfig, RunContext


def _check_lambda(margin_lambda: float) -> None:
    if not (margin_lambda >= 0 and math.isfinite(margin_lambda)):
        raise ValueError(f"margin_lambda must be finite and >= 0 (0 = plain cross-entropy; the paper uses 0.1 "
                         f"to 0.3), got {margin_lambda}")


def class_margins(text_features: torch.Tensor, margin_lambda: float) -> torch.Tensor:
    """C x C matrix M[i, j] = lambda * (1 - cos(t_i, t_j)), zero on the diagonal."""
    _check_lambda(margin_lambda)
    if text_features.ndim != 2:
        raise ValueError(f"text_features must be C x D (one row per class), got shape {tuple(text_features.shape)}")
    t = F.normalize(text_features.to(torch.promote_types(text_features.dtype, torch.float32)), dim=-1)
    margins = margin_lambda * (1.0 - t @ t.T)
    return margins.fill_diagonal_(0.0)


def margin_logits(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                  margin_lambda: float, logit_scale: float | torch.Tensor,
                  margins: torch.Tensor | None = None) -> torch.Tensor:
    """The MMS logits z (N x C) defined in the module docstring. `margins` may pass a precomputed
    `class_margins(text_features, margin_lambda)` (the text features are frozen during fine-tuning)."""
    if image_features.ndim != 2 or labels.ndim != 1 or image_features.shape[0] != labels.shape[0]:
        raise ValueError(f"image_features must be N x D and labels N: got {tuple(image_features.shape)} and "
                         f"{tuple(labels.shape)}")
    if image_features.shape[1] != text_features.shape[-1]:
        raise ValueError(f"feature dimensions differ: image {image_features.shape[1]}, text {text_features.shape[-1]}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}: pass labels.long()")
    classes = text_features.shape[0]
    if margins is not None and tuple(margins.shape) != (classes, classes):
        raise ValueError(f"margins have shape {tuple(margins.shape)} but there are {classes} classes: build them with "
                         f"class_margins(text_features, margin_lambda) from the same text features")
    if labels.numel() and (labels.min() < 0 or labels.max() >= text_features.shape[0]):
        raise ValueError(f"labels must be class ids in 0..{text_features.shape[0] - 1}")
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    f = F.normalize(image_features.to(dtype), dim=-1)
    t = F.normalize(text_features.to(dtype), dim=-1)
    cosine = f @ t.T
    _check_lambda(margin_lambda)
    if margin_lambda == 0:
        return logit_scale * cosine
    if margins is None:
        margins = class_margins(t, margin_lambda)
    return logit_scale * (cosine + margins[labels])


def mms_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
             margin_lambda: float, logit_scale: float | torch.Tensor,
             margins: torch.Tensor | None = None) -> torch.Tensor:
    """Mean MMS loss over the batch; raw features in (normalised here), `text_features` one row per class."""
    if labels.numel() == 0:
        raise ValueError("mms_loss got an empty batch: the mean over no samples is undefined; pass at least one sample")
    logits = margin_logits(image_features, text_features, labels, margin_lambda, logit_scale, margins)
    return F.cross_entropy(logits, labels)


def reference_kl(reference_features: torch.Tensor, features: torch.Tensor, classifier: torch.Tensor,
                 logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(p_ref || p), p = softmax(logit_scale * cos(f, w_m)) over the rows w_m of
    `classifier`: the regulariser of CAR-FT (reference = the frozen pre-trained encoder, classifier = the
    context templates) and the self-distillation of OGEN (reference = the mean teacher, classifier = the classes)."""
    w = F.normalize(classifier.to(features.dtype), dim=-1)
    return softmax_kl(logit_scale * F.normalize(reference_features.to(features.dtype), dim=-1) @ w.T,
                      logit_scale * F.normalize(features, dim=-1) @ w.T)


def softmax_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of KL(softmax(reference_logits) || softmax(logits)), N x C each."""
    log_p_ref = torch.log_softmax(reference_logits.to(logits.dtype), dim=1)
    log_p = torch.log_softmax(logits, dim=1)
    return (log_p_ref.exp() * (log_p_ref - log_p)).sum(1).mean()


# -- the loss parts of a method (methods/base.py) ----------------------------------------------------------

@dataclass
class CEConfig(PartConfig):
    """Cross-entropy on logit_scale * cos(f, t_c): plain fine-tuning's loss."""

    kind: ClassVar[str] = "ce"
    role: ClassVar[str] = "loss"
    trains: ClassVar[Tuple[str, ...]] = ("image",)
    summary: ClassVar[str] = "cross-entropy on scaled cosines to the frozen class text features"

    def build(self) -> "CrossEntropy":
        return CrossEntropy(self)


@dataclass
class MMSConfig(PartConfig):
    """Margin metric softmax (CLIPood Eq. 4-5); lambda 0.3 is the official domain-shift and base-to-new value,
    0.1 the in-the-wild one (docs/methods.md)."""

    kind: ClassVar[str] = "mms"
    role: ClassVar[str] = "loss"
    trains: ClassVar[Tuple[str, ...]] = ("image",)
    summary: ClassVar[str] = "margin metric softmax: class-adaptive margins lambda * (1 - cos(t_y, t_j))"
    margin_lambda: float = 0.3

    def validate(self) -> None:
        _check_lambda(self.margin_lambda)

    def build(self) -> "MarginMetricSoftmax":
        return MarginMetricSoftmax(self)


class CrossEntropy(Loss):
    """Cross-entropy of logit_scale * cos(f, t_c): MMS at lambda = 0 (the module docstring)."""

    def loss(self, batch: Batch) -> Tuple[torch.Tensor, Metrics]:
        if batch.cosines is not None:                  # a part adapted the class scores (Tip-Adapter, CoCoOp)
            return F.cross_entropy(self.run.logit_scale * batch.cosines, batch.labels), {}
        return mms_loss(batch.features, batch.class_features, batch.labels, 0.0, self.run.logit_scale), {}


class MarginMetricSoftmax(Loss):
    """`mms_loss` on the model's class features, with the margins computed once from the frozen zero-shot text
    features (CLIPood Eq. 5: the margins come from the pre-trained text encoder)."""

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.margins = class_margins(run.text_features, self.cfg.margin_lambda) if self.cfg.margin_lambda else None

    def loss(self, batch: Batch) -> Tuple[torch.Tensor, Metrics]:
        if batch.cosines is not None:                  # class scores adapted by a part: the margins add to them
            margins = 0.0 if self.margins is None else self.margins[batch.labels]
            return F.cross_entropy(self.run.logit_scale * (batch.cosines + margins), batch.labels), {}
        return mms_loss(batch.features, batch.class_features, batch.labels, self.cfg.margin_lambda,
                        self.run.logit_scale, self.margins), {}
