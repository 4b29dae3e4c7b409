"""Fine-tuning methods as compositions of parts (methods/base.py), named in one registry.

A new method is one module (its part and the part's config) plus one line in METHODS; any other combination of
existing parts is a configuration (`compose("mms+context-kl+ema")`), not a subclass.
"""
from dataclasses import replace
from typing import Dict, List

from clipood_kit.methods.averagers import BMAConfig, BMAGridConfig, EMAConfig, WiSEConfig
from clipood_kit.methods.averaging import (BetaMovingAverage, ExponentialMovingAverage, LocalMeanTeacher, beta_pdf, beta_weights,
                        interpolate, with_average, zero_shot_share)
from clipood_kit.methods.base import Batch, Method, MethodConfig, PartConfig, PartInputs, RunContext
from clipood_kit.methods.carft import ContextKLConfig
from clipood_kit.methods.losses import CEConfig, MMSConfig, class_margins, margin_logits, mms_loss, reference_kl
from clipood_kit.methods.clip_adapter import CLIPAdapterConfig
from clipood_kit.methods.cocoop import CoCoOpConfig
from clipood_kit.methods.coop import CoOpConfig
from clipood_kit.methods.flyp import FLYPConfig
from clipood_kit.methods.swad import SWADConfig
from clipood_kit.methods.tip_adapter import TipAdapterConfig
from clipood_kit.methods.lpft import LPFTConfig
from clipood_kit.methods.ogen import FeatureGenerator, OGENConfig, SelfDistillConfig

# The paper methods, as presets of parts (each part's config holds the paper's defaults).
METHODS: Dict[str, MethodConfig] = {
    "ce": MethodConfig("ce", CEConfig()),
    "mms": MethodConfig("mms", MMSConfig()),
    "bma": MethodConfig("bma", CEConfig(), averager=BMAConfig()),
    "clipood": MethodConfig("clipood", MMSConfig(), averager=BMAConfig()),
    "ema": MethodConfig("ema", CEConfig(), averager=EMAConfig()),
    "swad": MethodConfig("swad", CEConfig(), averager=SWADConfig()),
    "wise-ft": MethodConfig("wise-ft", CEConfig(), averager=WiSEConfig()),
    "car-ft": MethodConfig("car-ft", CEConfig(), (ContextKLConfig(),)),
    "car-ft-mms": MethodConfig("car-ft-mms", MMSConfig(), (ContextKLConfig(),)),
    "car-ft-clipood": MethodConfig("car-ft-clipood", MMSConfig(), (ContextKLConfig(),), BMAConfig()),
    # OGEN in its own setting: CoOp's prompt context, one optimiser for context and generator (apple/ml-ogen
    # trainers/ogen.py line 339); ogen-ft: this bench's image-encoder variant (methods/ogen.py)
    "ogen": MethodConfig("ogen", CoOpConfig(), (OGENConfig(lr_scale=1.0), SelfDistillConfig())),
    "ogen-ft": MethodConfig("ogen-ft", CEConfig(), (OGENConfig(), SelfDistillConfig())),
    "clipood-grid": MethodConfig("clipood-grid", MMSConfig(), averager=BMAGridConfig()),
    "lp-ft": MethodConfig("lp-ft", LPFTConfig()),
    "clip-adapter": MethodConfig("clip-adapter", CLIPAdapterConfig()),
    "coop": MethodConfig("coop", CoOpConfig()),
    "cocoop": MethodConfig("cocoop", CoCoOpConfig()),
    "flyp": MethodConfig("flyp", FLYPConfig()),
    "tip-adapter": MethodConfig("tip-adapter", TipAdapterConfig()),
    "tip-adapter-f": MethodConfig("tip-adapter-f", TipAdapterConfig(train_keys=True)),
}


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


__all__ = ["METHODS", "Method", "MethodConfig", "PartConfig", "PartInputs", "RunContext", "Batch", "compose", "part_configs",
           "method_from_dict", "CEConfig", "MMSConfig", "BMAConfig", "BMAGridConfig", "EMAConfig", "WiSEConfig", "ContextKLConfig",
           "OGENConfig", "SelfDistillConfig", "FeatureGenerator", "BetaMovingAverage", "ExponentialMovingAverage",
           "LocalMeanTeacher", "beta_pdf", "beta_weights", "zero_shot_share", "interpolate", "with_average",
           "class_margins", "margin_logits", "mms_loss", "reference_kl"]
