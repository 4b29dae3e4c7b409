"""clipood-kit: fine-tune CLIP so it stays robust out of distribution.

The public facade: build a spec, run it, or take its pieces. The package is in layers (README, "Layout";
`tests/test_layers.py`): core, data, models, methods, evaluation, engine, viz, studies, lessons, cli.

    from clipood_kit import build_experiment, run
    result = run(build_experiment(method="clipood", steps=60), out="runs/x")
"""
from clipood_kit.engine.builder import build_experiment, spec_from_dict
from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.engine.runs import run, run_method
from clipood_kit.methods import METHODS, BetaMovingAverage, beta_weights, class_margins, compose, mms_loss
from clipood_kit.models import load_clip

__version__ = "0.1.0"
__all__ = ["build_experiment", "spec_from_dict", "ExperimentConfig", "prepare", "run", "run_method", "METHODS",
           "compose", "BetaMovingAverage", "beta_weights", "class_margins", "mms_loss", "load_clip"]
