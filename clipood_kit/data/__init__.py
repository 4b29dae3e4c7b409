"""Data: the embedded world, DomainBed-style folders, deterministic splits, transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from clipood_kit.data import world
from clipood_kit.data.datasets import (DatasetError, DomainDataset, FolderDataset, TransformedSubset, WorldDataset,
                       export_world)

WORLD = "world"


def open_dataset(source: str = WORLD, per_cell: int = 40, seed: int = 0,
                 styles: Optional[Sequence[str]] = None) -> DomainDataset:
    """`"world"`: the embedded world grid (per_cell images per style x class, seeded; `styles`: its styles, default
    `world.DEFAULT_STYLES`); otherwise the path of a DomainBed-style folder tree."""
    if source == WORLD:
        config = world.WorldConfig(styles=tuple(styles)) if styles is not None else world.WorldConfig()
        return WorldDataset(per_cell=per_cell, seed=seed, config=config)
    return FolderDataset(Path(source))


__all__ = ["DatasetError", "DomainDataset", "FolderDataset", "TransformedSubset", "WorldDataset", "export_world",
           "open_dataset", "WORLD"]
