"""clipood-kit: fine-tune CLIP so it stays robust out of distribution.

The public functions of CLIPood (Shu et al., ICML 2023) live here; the rest is organised by module:
`data` (the embedded world, folder datasets, splits), `models` (loader), `methods` (parts and the method
registry), `training` (the Accelerate loop), `experiment` (config, prepare), `scoring` (cells, OOD, headline),
`runs` (run and write a method), `bench` and `presets` (demo, compare), `report`, `figures`, `widgets`, `cli`.
"""
from clipood_kit.methods import BetaMovingAverage, beta_weights, class_margins, mms_loss
from clipood_kit.models import load_clip

__version__ = "0.1.0"
__all__ = ["BetaMovingAverage", "beta_weights", "class_margins", "mms_loss", "load_clip"]
