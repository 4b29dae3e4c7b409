"""Paper recipes (docs/methods.md, CLIPood official code) as experiment presets, so that a user with the
weights, the data and a GPU runs the paper's protocol with one command:

    clipood-kit finetune --preset domainbed-vitb16 --data /data/PACS --target sketch --out runs/pacs-sketch

CLI options given explicitly override the preset. The tiny presets are the defaults tuned for the embedded
world on a CPU.
"""
from __future__ import annotations

from dataclasses import replace

from .demo import demo_experiment
from .methods import MethodConfig
from .protocols import ExperimentConfig
from .training import TrainConfig

_VIT_B16 = dict(model="ViT-B-16", pretrained="openai", device="cuda")

PRESETS = {
    # DomainBed leave-one-domain-out: lambda 0.3, Beta(0.5, 0.5), AdamW lr 5e-6, wd 0.1, batch 36
    # (12 per source domain), 5000 steps (DomainBed's default), bf16 autocast with fp32 master weights.
    "domainbed-vitb16": ExperimentConfig(
        **_VIT_B16, protocol="domain-shift", holdout_fraction=0.2,
        method=MethodConfig(name="clipood", margin_lambda=0.3, bma_alpha=0.5, bma_beta=0.5),
        train=TrainConfig(steps=5000, batch_size=36, lr=5e-6, weight_decay=0.1, precision="bf16", num_workers=8,
                          checkpoint_every=500)),
    # Base-to-new: 16 shots per base class, lambda 0.3, Beta(0.1, 0.1), lr 1e-5, batch 36.
    "base-to-new-vitb16": ExperimentConfig(
        **_VIT_B16, protocol="base-to-new", shots=16,
        method=MethodConfig(name="clipood", margin_lambda=0.3, bma_alpha=0.1, bma_beta=0.1),
        train=TrainConfig(steps=2000, batch_size=36, lr=1e-5, weight_decay=0.1, precision="bf16", num_workers=8,
                          checkpoint_every=500)),
    # In the wild: base classes of the source domains, lambda 0.1.
    "in-the-wild-vitb16": ExperimentConfig(
        **_VIT_B16, protocol="in-the-wild", shots=16,
        method=MethodConfig(name="clipood", margin_lambda=0.1, bma_alpha=0.5, bma_beta=0.5),
        train=TrainConfig(steps=2000, batch_size=36, lr=1e-5, weight_decay=0.1, precision="bf16", num_workers=8,
                          checkpoint_every=500)),
    "tiny-world": demo_experiment(),
}


def get_preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return replace(p, method=replace(p.method), train=replace(p.train))
