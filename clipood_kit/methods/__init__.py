"""Fine-tuning methods, one registry: a new method is one module and one line in METHODS."""
from .averaging import (BetaMovingAverage, ExponentialMovingAverage, LocalMeanTeacher, beta_pdf, beta_weights,
                        interpolate, with_average, zero_shot_share)
from .base import Method, MethodConfig
from .carft import CARFT, CARFTCLIPood, CARFTMMS
from .clipood import BMA, MMS, CLIPood
from .ema import EMA
from .losses import class_margins, margin_logits, mms_loss, reference_kl
from .ogen import OGEN, FeatureGenerator
from .wise_ft import WiSEFT

METHODS = {
    "ce": Method,
    "mms": MMS,
    "bma": BMA,
    "clipood": CLIPood,
    "ema": EMA,
    "wise-ft": WiSEFT,
    "car-ft": CARFT,
    "car-ft-mms": CARFTMMS,
    "car-ft-clipood": CARFTCLIPood,
    "ogen": OGEN,
}


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; choose one of {sorted(METHODS)}")
    return METHODS[cfg.name](cfg)


__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "OGEN", "FeatureGenerator", "BetaMovingAverage", "ExponentialMovingAverage", "LocalMeanTeacher",
           "beta_pdf", "beta_weights", "zero_shot_share", "interpolate", "with_average", "class_margins", "margin_logits", "mms_loss", "reference_kl"]
