"""The one way to build an experiment spec: a preset, then named overrides, then `--set KEY=VALUE` lines.

The command line, the Python API, the notebooks, the bench and the sweeps all build their spec here, so a CLI
run is reproduced from Python by its spec alone (`engine.runs.run(spec)`; results.json records the spec).

    spec = build_experiment("tiny-world", steps=60, method="ce", seed=1, settings=["mms.margin_lambda=0.2"])

Overrides (the CLI's option names): model, pretrained ('none': random init), device, data, per_cell, data_seed,
protocol, source (list of source domains), target (list of held-out domains; the others are sources), shots,
templates, ood_data (OOD image folders, '[near:|far:][NAME=]FOLDER'), method (a registered name or parts joined
by '+'), steps, lr, batch_size, precision, seed,
checkpoint_every, num_workers, cache_dir, eval_batch_size. Seed rule: `seed` sets the training seed (batches,
augmentations, the parts' draws) and the split seed together (`with_seed`); `--set split_seed=...` or
`--set train.seed=...` set one alone.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from clipood_kit.data import WORLD, open_dataset
from clipood_kit.data.layouts import parse_data
from clipood_kit.engine.experiment import ExperimentConfig
from clipood_kit.engine.presets import get_preset
from clipood_kit.engine.settings import apply_settings
from clipood_kit.methods import compose

TOP = ("model", "pretrained", "device", "data", "per_cell", "data_seed", "protocol", "shots", "templates",
       "cache_dir", "eval_batch_size", "ood_data", "eval_data")
TRAIN = ("steps", "lr", "batch_size", "precision", "checkpoint_every", "num_workers")
OTHER = ("source", "target", "method", "seed")
OVERRIDES = TOP + TRAIN + OTHER


def with_seed(exp: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The seed rule: one seed for training (batches, augmentations, parts) and for the split."""
    return replace(exp, split_seed=seed, train=replace(exp.train, seed=seed))


def apply_overrides(exp: ExperimentConfig, settings: Iterable[str] = (), **overrides) -> ExperimentConfig:
    """`exp` with the named overrides (None: keep), then the `KEY=VALUE` settings, validated before any work."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown}; the builder takes {', '.join(OVERRIDES)} and settings "
                         f"KEY=VALUE (engine/settings.py)")
    given = {k: v for k, v in overrides.items() if v is not None}
    top = {k: given[k] for k in TOP if k in given}
    if isinstance(top.get("pretrained"), str) and top["pretrained"].lower() == "none":
        top["pretrained"] = None
    if "templates" in top:
        top["templates"] = list(top["templates"]) or None
    for key in ("ood_data", "eval_data"):
        if key in top:
            top[key] = list(top[key])
    if top.get("data", WORLD) != WORLD and exp.data != WORLD:
        # a preset that names its dataset ('oxfordpets:') reads it from the folder given: 'oxfordpets:ROOT'
        preset_kind, _ = parse_data(exp.data)
        if preset_kind and parse_data(top["data"])[0] is None:
            top["data"] = f"{preset_kind}:{top['data']}"
    if top.get("data", WORLD) != WORLD and exp.data == WORLD:
        # a folder replaces the world: the spec's world-only choices (its styles, its source styles, the style's
        # templates) would not fit it, so they go unless given again
        top.update(world_styles=None, source_domains=None)
        top.setdefault("templates", None)
    if given.get("source"):
        top["source_domains"] = list(given["source"])
    if given.get("target"):
        data = top.get("data", exp.data)
        styles = top.get("world_styles", exp.world_styles) if data == WORLD else None
        domains = open_dataset(data, top.get("per_cell", exp.per_cell), styles=styles).domains
        missing = [t for t in given["target"] if t not in domains]
        if missing:
            raise ValueError(f"target domain(s) {missing} not in the dataset; its domains are {domains}")
        top["source_domains"] = [d for d in domains if d not in given["target"]]
    if "method" in given:
        method = given["method"]
        top["method"] = compose(method) if isinstance(method, str) else method
    train = {k: given[k] for k in TRAIN if k in given}
    if "batch_size" in train:
        train["batch_per_domain"] = None
    exp = replace(exp, **top, train=replace(exp.train, **train))
    if "seed" in given:
        exp = with_seed(exp, int(given["seed"]))
    exp = apply_settings(exp, list(settings))
    exp.method.validate()
    exp.train.validate()
    return exp


def build_experiment(preset: str = "tiny-world", settings: Iterable[str] = (), **overrides) -> ExperimentConfig:
    """The spec of `preset` (engine/presets.py) with the overrides and settings applied (module docstring)."""
    return apply_overrides(get_preset(preset), settings, **overrides)


def spec_from_dict(d: dict) -> ExperimentConfig:
    """The spec a results.json recorded (`ExperimentConfig.to_dict`), to run it again."""
    return ExperimentConfig(**d)


__all__ = ["build_experiment", "apply_overrides", "with_seed", "spec_from_dict", "OVERRIDES"]
