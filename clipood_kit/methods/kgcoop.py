"""KgCoOp, knowledge-guided context optimisation (Yao, Zhang & Xu, "Visual-Language Prompt Tuning with
Knowledge-guided Context Optimization", CVPR 2023; official code github.com/htyao89/KgCoOp, `KgCoOp/trainers/kgcoop.py`).

CoOp (methods/coop.py: the prompt context learnt in the frozen text tower, cross-entropy on the base classes) plus
a penalty that keeps each learnt class text feature near the hand-crafted prompt's, so the context does not forget
the general knowledge that serves the new classes:

    loss = CE(logits, y) + w * (1 - mean_c cos(t_c, t_c^clip))

t_c the learnt prompt's normalised text feature of training class c, t_c^clip the frozen CLIP's for the
hand-crafted prompt (official `CustomCLIP.forward`, lines 223-243: `torch.nn.CosineSimilarity(dim=1, eps=1e-07)`
over the training classes, `score = 1.0 - torch.mean(score)`; `forward_backward` line 310:
`F.cross_entropy(output, label) + self.w * score`). w = 8.0, the weight of the paper and of its scripts
(`KgCoOp/README.md` line 42: `bash base2new_train.sh stanford_cars 8.0`, `TRAINER.COOP.W`).

The hand-crafted features are the experiment's zero-shot classifier of the training classes (its templates; on
CoOp's datasets the dataset's template, `data/coop_layout.py`). KgCoOp's own template table
(`trainers/kgcoop.py` lines 37-54) differs from CLIPood's on one dataset, DTD ("a photo of a {}, a type of
texture." against "{} texture."): `reference_template` sets the official one where it matters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch
import torch.nn.functional as F

from clipood_kit.methods.base import Batch, Metrics, MethodConfig, PartConfig, MethodContext, Regulariser, RunContext
from clipood_kit.methods.coop import CoOpConfig
from clipood_kit.methods.registry import FewShotBudget, register


@dataclass
class KnowledgeGuidanceConfig(PartConfig):
    kind: ClassVar[str] = "kg"
    role: ClassVar[str] = "regulariser"
    summary: ClassVar[str] = "KgCoOp: weight * (1 - mean cos(learnt class text feature, hand-crafted one))"
    weight: float = 8.0                 # official TRAINER.COOP.W in the base-to-new scripts
    reference_template: str = ""        # "": the experiment's zero-shot classifier; else this template's features

    def validate(self) -> None:
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"kg.weight must be finite and >= 0, got {self.weight}")
        if self.reference_template and "{}" not in self.reference_template:
            raise ValueError(f"kg.reference_template needs a '{{}}' for the class name, got {self.reference_template!r}")

    def build(self) -> "KnowledgeGuidance":
        return KnowledgeGuidance(self)


class KnowledgeGuidance(Regulariser):
    reference_features: Optional[torch.Tensor] = None      # training classes x D, from `reference_template`

    def prepare(self, context: MethodContext) -> None:
        if self.cfg.reference_template:
            names = [context.class_names[i] for i in context.train_class_ids]
            self.reference_features = context.clip.encode_prompts([self.cfg.reference_template.format(c) for c in names])

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        reference = run.text_features if self.reference_features is None else self.reference_features
        self.reference = F.normalize(reference.to(run.device, run.text_features.dtype), dim=-1)

    def penalty(self, batch: Batch) -> Tuple[Optional[torch.Tensor], Metrics]:
        if batch.class_features is None:
            raise ValueError("kg (KgCoOp) needs the model's class features: use it with a prompt-learning loss")
        learnt = F.normalize(batch.class_features, dim=-1)
        score = 1.0 - F.cosine_similarity(learnt, self.reference.to(learnt.dtype), dim=1, eps=1e-7).mean()
        return self.cfg.weight * score, {"kg_score": score.detach()}


# KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml: batch 128 (line 3), SGD (16), lr 0.002 (17), 100 epochs
# (18), cosine (19), one constant warm-up epoch at 1e-5 (20-22); CTX_INIT "a photo of a" (kgcoop.py lines 93-96)
register(MethodConfig("kgcoop", CoOpConfig(), (KnowledgeGuidanceConfig(),)), "prompt", ("study",),
         FewShotBudget({1: 100}, 128, 2e-3, source="htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"))
