"""Fine-tuning methods as compositions of parts (methods/base.py), named in one registry (methods/registry.py).

A new method is one module (its part, the part's config and its `register(...)` line) and its test: this package
imports every module in it, so the registry, the benches and the CLI see the method with no other file changed.
Any other combination of existing parts is a configuration (`compose("mms+context-kl+ema")`), not a subclass.
The built-in methods are registered below, in the order the benches list them.
"""
import importlib
import pkgutil
from dataclasses import replace
from typing import Dict, List

from clipood_kit.methods.averagers import BMAConfig, BMAGridConfig, EMAConfig, WiSEConfig
from clipood_kit.methods.averaging import (BetaMovingAverage, ExponentialMovingAverage, LocalMeanTeacher, beta_pdf, beta_weights,
                        interpolate, with_average, zero_shot_share)
from clipood_kit.methods.base import Batch, Method, MethodConfig, PartConfig, MethodContext, RunContext
from clipood_kit.methods.carft import ContextKLConfig
from clipood_kit.methods.losses import CEConfig, MMSConfig, class_margins, margin_logits, mms_loss, reference_kl
from clipood_kit.methods.clip_adapter import CLIPAdapterConfig
from clipood_kit.methods.cocoop import CoCoOpConfig
from clipood_kit.methods.coop import CoOpConfig
from clipood_kit.methods.flyp import FLYPConfig
from clipood_kit.methods.registry import REGISTRY, FewShotBudget, Registration, budgets, methods_for, register
from clipood_kit.methods.swad import SWADConfig
from clipood_kit.methods.tip_adapter import TipAdapterConfig
from clipood_kit.methods.lpft import LPFTConfig
from clipood_kit.methods.ogen import FeatureGenerator, OGENConfig, SelfDistillConfig

# CoOp's few-shot runs (KaiyangZhou/CoOp COOP.md lines 15-19: rn50_ep50 for 1 shot, rn50_ep100 for 2 and 4,
# rn50 for 8 and 16; configs/trainers/CoOp/rn50.yaml: batch 32 line 3, SGD line 16, lr 0.002 line 17, 200 epochs
# line 18, one constant warm-up epoch at 1e-5 lines 20-22)
COOP_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
COOP_BUDGET = FewShotBudget(COOP_EPOCHS, 32, 2e-3,
                            source="KaiyangZhou/CoOp COOP.md lines 15-19, configs/trainers/CoOp/rn50*.yaml")

# The paper methods, as presets of parts (each part's config holds the paper's defaults), with their family, the
# benches they join and, for few-shot methods, their official budget.
DEMO, COMPARE, STUDY = ("demo", "compare"), ("compare",), ("study",)
register(MethodConfig("ce", CEConfig()), "fine-tuning", ("demo", "compare", "study"))
register(MethodConfig("mms", MMSConfig()), "fine-tuning", DEMO)
register(MethodConfig("bma", CEConfig(), averager=BMAConfig()), "averaging", DEMO)
register(MethodConfig("clipood", MMSConfig(), averager=BMAConfig()), "averaging", ("demo", "compare", "study"))
register(MethodConfig("wise-ft", CEConfig(), averager=WiSEConfig()), "averaging", DEMO)
register(MethodConfig("ema", CEConfig(), averager=EMAConfig()), "averaging", DEMO)
register(MethodConfig("swad", CEConfig(), averager=SWADConfig()), "averaging", COMPARE)
register(MethodConfig("car-ft", CEConfig(), (ContextKLConfig(),)), "fine-tuning", COMPARE)
register(MethodConfig("car-ft-mms", MMSConfig(), (ContextKLConfig(),)), "fine-tuning")
register(MethodConfig("car-ft-clipood", MMSConfig(), (ContextKLConfig(),), BMAConfig()), "averaging", COMPARE)
# ogen-ft: this bench's image-encoder variant of OGEN (methods/ogen.py)
register(MethodConfig("ogen-ft", CEConfig(), (OGENConfig(), SelfDistillConfig())), "fine-tuning", ("compare", "study"))
register(MethodConfig("flyp", FLYPConfig()), "fine-tuning", STUDY)
register(MethodConfig("lp-ft", LPFTConfig()), "fine-tuning")
register(MethodConfig("clipood-grid", MMSConfig(), averager=BMAGridConfig()), "averaging")
register(MethodConfig("coop", CoOpConfig()), "prompt", STUDY, COOP_BUDGET)
# configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml: batch 1 (line 3), SGD (15), lr 0.002 (16), 10 epochs (17)
register(MethodConfig("cocoop", CoCoOpConfig()), "prompt", STUDY, FewShotBudget(
    {1: 10}, 1, 2e-3, source="KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"))
# OGEN in its own setting: CoOp's prompt context, one optimiser for context and generator (apple/ml-ogen
# trainers/ogen.py line 339); configs/trainers/OGEN/vit_b16_ep200_ctxv1.yaml (scripts/ogen/base2new_train_ep200.sh):
# batch 32 (line 3), SGD (15), lr 0.002 (16), 200 epochs (17), the CoOp warm-up (18-21)
register(MethodConfig("ogen", CoOpConfig(), (OGENConfig(lr_scale=1.0), SelfDistillConfig())), "prompt", STUDY,
         FewShotBudget({1: 200}, 32, 2e-3, source="apple/ml-ogen configs/trainers/OGEN/vit_b16_ep200_ctxv1.yaml"))
# CLIP-Adapter trains in CoOp's Dassl frame: optimiser and schedule from cfg.OPTIM (gaopengcuhk/CLIP-Adapter
# clip_adapter.py, build_optimizer / build_lr_scheduler), so CoOp's configs
register(MethodConfig("clip-adapter", CLIPAdapterConfig()), "adapter", STUDY, FewShotBudget(
    COOP_EPOCHS, 32, 2e-3, source="CLIP-Adapter clip_adapter.py: Dassl with CoOp's configs"))
register(MethodConfig("tip-adapter", TipAdapterConfig()), "adapter", STUDY)          # training-free
# gaopengcuhk/Tip-Adapter configs/imagenet.yaml: lr 0.001 (line 29), 20 epochs (line 31); main_imagenet.py: batch
# 256, AdamW (eps 1e-4, torch's weight decay 0.01), CosineAnnealingLR over every step of the 20 epochs
register(MethodConfig("tip-adapter-f", TipAdapterConfig(train_keys=True)), "adapter", STUDY, FewShotBudget(
    {1: 20}, 256, 1e-3, optimizer="adamw", schedule="cosine", weight_decay=0.01,
    source="gaopengcuhk/Tip-Adapter configs/imagenet.yaml, main_imagenet.py"))

# every other module of this package: a method module registers itself when imported
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

METHODS: Dict[str, MethodConfig] = {name: r.method for name, r in REGISTRY.items()}


def part_configs() -> Dict[str, type]:
    """Every part the registry's methods use, by kind (a part is known once a method uses it)."""
    return {type(p).kind: type(p) for m in METHODS.values() for p in m.parts()}


def compose(spec: str) -> MethodConfig:
    """A method from a preset name ('clipood') or parts joined by '+' ('mms+context-kl+ema'), defaults each."""
    if spec in METHODS:
        m = METHODS[spec]
        return MethodConfig(m.name, replace(m.loss), tuple(replace(r) for r in m.regularisers),
                            None if m.averager is None else replace(m.averager))
    kinds, known = [k.strip() for k in spec.split("+")], part_configs()
    unknown = [k for k in kinds if k not in known]
    if unknown or "+" not in spec:
        raise ValueError(f"unknown method {spec!r}: give a method ({', '.join(METHODS)}) or parts joined by '+' "
                         f"({', '.join(known)}), e.g. 'mms+context-kl+ema'")
    parts = [known[k]() for k in kinds]
    by_role: Dict[str, List[PartConfig]] = {"loss": [], "regulariser": [], "averager": []}
    for p in parts:
        by_role[p.role].append(p)
    if len(by_role["loss"]) != 1 or len(by_role["averager"]) > 1:
        raise ValueError(f"method {spec!r} must have exactly one loss "
                         f"({', '.join(k for k, c in known.items() if c.role == 'loss')}) and at most one averager "
                         f"({', '.join(k for k, c in known.items() if c.role == 'averager')})")
    return MethodConfig(spec, by_role["loss"][0], tuple(by_role["regulariser"]),
                        by_role["averager"][0] if by_role["averager"] else None)


def method_from_dict(d: dict) -> MethodConfig:
    """The inverse of MethodConfig.to_dict (results.json, checkpoints)."""
    known = part_configs()

    def part(p: dict) -> PartConfig:
        p = dict(p)
        kind = p.pop("kind")
        if kind not in known:
            raise ValueError(f"unknown method part {kind!r}; known parts: {', '.join(known)}")
        return known[kind](**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})

    return MethodConfig(d["name"], part(d["loss"]), tuple(part(r) for r in d.get("regularisers", ())),
                        None if d.get("averager") is None else part(d["averager"]))


__all__ = ["METHODS", "REGISTRY", "FewShotBudget", "Registration", "budgets", "methods_for", "register", "Method", "MethodConfig", "PartConfig", "MethodContext", "RunContext", "Batch", "compose", "part_configs",
           "method_from_dict", "CEConfig", "MMSConfig", "BMAConfig", "BMAGridConfig", "EMAConfig", "WiSEConfig", "ContextKLConfig",
           "OGENConfig", "SelfDistillConfig", "FeatureGenerator", "BetaMovingAverage", "ExponentialMovingAverage",
           "LocalMeanTeacher", "beta_pdf", "beta_weights", "zero_shot_share", "interpolate", "with_average",
           "class_margins", "margin_logits", "mms_loss", "reference_kl"]
