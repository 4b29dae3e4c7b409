"""Exponential moving average of the weights over fine-tuning (a common temporal-ensemble baseline)."""
from .base import Method


class EMA(Method):
    name = "ema"
    averager_kind = "ema"
