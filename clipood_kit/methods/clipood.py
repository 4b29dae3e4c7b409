"""CLIPood and its ablations (Shu et al., ICML 2023): MMS loss and/or the Beta moving average.

- `mms`: margin metric softmax only (Sec. 3.2), last model.
- `bma`: cross-entropy + Beta moving average (Sec. 3.3), BMA model.
- `clipood`: MMS + BMA, BMA model (the full method).
"""
from .base import Method


class MMS(Method):
    name = "mms"
    margin_lambda_used = True


class BMA(Method):
    name = "bma"
    averager_kind = "bma"


class CLIPood(Method):
    name = "clipood"
    margin_lambda_used = True
    averager_kind = "bma"
