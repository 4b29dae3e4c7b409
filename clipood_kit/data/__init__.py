"""Data: the embedded world, DomainBed-style folders, deterministic splits, transforms."""
from __future__ import annotations

from typing import Optional, Sequence

from clipood_kit.data import world
from clipood_kit.data.datasets import (DatasetError, DomainDataset, FolderDataset, TransformedSubset, WorldDataset,
                       export_world)

WORLD = "world"


def open_dataset(source: str = WORLD, per_cell: int = 40, seed: int = 0,
                 styles: Optional[Sequence[str]] = None) -> DomainDataset:
    """`"world"`: the embedded world grid (per_cell images per style x class, seeded; `styles`: its styles, default
    `world.DEFAULT_STYLES`); otherwise 'KIND:ROOT' or a folder (`layouts.open_layout`: CoOp's, DomainBed's and
    MCM's layouts, or any DomainBed-style tree root/<domain>/<class>/<image>)."""
    if source == WORLD:
        config = world.WorldConfig(styles=tuple(styles)) if styles is not None else world.WorldConfig()
        return WorldDataset(per_cell=per_cell, seed=seed, config=config)
    from clipood_kit.data.layouts import open_layout
    return open_layout(str(source))


__all__ = ["DatasetError", "DomainDataset", "FolderDataset", "TransformedSubset", "WorldDataset", "export_world",
           "open_dataset", "WORLD"]
