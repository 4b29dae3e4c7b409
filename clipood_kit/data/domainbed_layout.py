"""DomainBed's five domain-generalisation datasets, read and split as DomainBed and CLIPood read and split them.

facebookresearch/DomainBed keeps each dataset as `$DATA/<folder>/<environment>/<class>/<image>` (PACS/,
VLCS/, office_home/, terra_incognita/, domain_net/; `domainbed/datasets.py` lines 227-260) and reads it with
`MultipleEnvironmentImageFolder` (lines 186-225): the environments are the sorted sub-folders, each one a
torchvision `ImageFolder` (classes: its sorted class folders; samples: class by class, `os.walk` sorted, file
names sorted, torchvision's image extensions).

**The hold-out split** (`holdout`): DomainBed's `misc.split_dataset(env, int(len(env) * 0.2),
misc.seed_hash(trial_seed, env_i))` (`domainbed/lib/misc.py` lines 132-137 and 167-178: numpy's
`RandomState(seed).shuffle` of the sample indices; the first n are "out", the rest "in"), called unchanged by
thuml/CLIPood `converter_domainbed.py` lines 44-54 with trial seed 0: sources train on their "in" split and
validate on their "out" split; a target domain is tested on its "out" split (CLIPood's choice; DomainBed's own
model selection reports a test environment's "in" split, `domainbed/model_selection.py`). The open-class variant
(CLIPood's in-the-wild setting, `converter_domainbed.py` lines 18-42) keeps the first int((1 - r) C) classes as
base and splits each environment's base and open images apart, seeded `seed_hash(0, env_i, "base")` and
`seed_hash(0, env_i, "open")`.

**Class names** for prompts are the folder names with `_` as a space (CLIPood `engine.py` line 118:
`Alarm_Clock` -> "Alarm Clock"), and the template is "a photo of a {}." (`engine.py` line 68).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from clipood_kit.data.datasets import DatasetError, DomainDataset, read_image, verify_images

DOMAINBED_DOC = "facebookresearch/DomainBed README.md (domainbed/scripts/download.py)"
# --data KIND -> (DomainBed's class, its folder under $DATA); DomainBed `domainbed/datasets.py` lines 227-260
DOMAINBED: Dict[str, Tuple[str, str]] = {
    "pacs": ("PACS", "PACS"), "vlcs": ("VLCS", "VLCS"), "officehome": ("OfficeHome", "office_home"),
    "terraincognita": ("TerraIncognita", "terra_incognita"), "domainnet": ("DomainNet", "domain_net")}
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")   # torchvision's
HOLDOUT = 0.2           # DomainBed's --holdout_fraction default, CLIPood's `holdout`
OPEN_RATIO = 0.5        # CLIPood's in-the-wild open classes (engine.py line 94)
TEMPLATE = "a photo of a {}."


def seed_hash(*args) -> int:
    """DomainBed's `misc.seed_hash`: md5 of `str(args)`, mod 2**31."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def split_keys(n_items: int, n: int, seed: int) -> Tuple[List[int], List[int]]:
    """DomainBed's `misc.split_dataset` on indices: (the first n of a seeded shuffle, the rest)."""
    if not 0 <= n <= n_items:
        raise ValueError(f"cannot hold out {n} of {n_items} items")
    keys = list(range(n_items))
    np.random.RandomState(seed).shuffle(keys)
    return keys[:n], keys[n:]


def image_folder(path: Path) -> Tuple[List[str], List[Tuple[Path, int]]]:
    """torchvision `ImageFolder`'s classes and samples: sorted class folders; in each, `os.walk` (following links)
    sorted, file names sorted, files with an image extension (case-insensitive)."""
    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    samples = []
    for label, name in enumerate(classes):
        for root, _, files in sorted(os.walk(path / name, followlinks=True)):
            samples += [(Path(root) / f, label) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return classes, samples


def dataset_folder(root: str | os.PathLike, kind: str) -> Path:
    """`root/<folder>` ($DATA given) or `root` itself (the dataset's folder given)."""
    root = Path(root)
    folder = DOMAINBED[kind][1]
    if (root / folder).is_dir():
        return root / folder
    if root.is_dir() and root.name == folder:
        return root
    raise DatasetError(f"{kind}: no folder {root / folder}; pass $DATA (the folder holding {folder}/) or "
                       f"{folder}/ itself ({DOMAINBED_DOC})")


class DomainBedDataset(DomainDataset):
    """A DomainBed dataset: its environments as domains (sorted folder names), ImageFolder's samples in order.

    `holdout(trial_seed)`: DomainBed's in / out split of each environment; `clipood_lists(targets, open_ratio)`: the
    train / val / test (and open) index lists of CLIPood's `converter_domainbed.py`."""

    def __init__(self, root: str | os.PathLike, kind: str):
        if kind not in DOMAINBED:
            raise DatasetError(f"unknown DomainBed dataset {kind!r}; choose one of {sorted(DOMAINBED)}")
        self.kind = kind
        self.folder = self.root = dataset_folder(root, kind)
        self.domains = sorted(f.name for f in os.scandir(self.folder) if f.is_dir())
        if not self.domains:
            raise DatasetError(f"{kind}: {self.folder} has no environment folders ({DOMAINBED_DOC})")
        paths, labels, domains, classes = [], [], [], None
        for d, env in enumerate(self.domains):
            env_classes, samples = image_folder(self.folder / env)
            if classes is None:
                classes = env_classes
            elif env_classes != classes:
                raise DatasetError(f"{kind}: environment {env!r} has classes {sorted(set(env_classes) ^ set(classes))} "
                                   f"that {self.domains[0]!r} has not (or the reverse); every environment needs the "
                                   f"same class folders ({DOMAINBED_DOC})")
            empty = sorted(set(range(len(env_classes))) - {y for _, y in samples})
            if empty:
                raise DatasetError(f"{kind}: class folder(s) {[env_classes[y] for y in empty]} of {env!r} hold no "
                                   f"images ({', '.join(IMG_EXTENSIONS)})")
            paths += [p for p, _ in samples]
            labels += [y for _, y in samples]
            domains += [d] * len(samples)
        self.raw_classes = list(classes)
        self.classes = [c.replace("_", " ") for c in classes]
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.domain_ids = torch.tensor(domains, dtype=torch.long)
        self.template = TEMPLATE
        self.name = f"{kind}({self.folder.resolve()})"

    def _env(self, d: int) -> torch.Tensor:
        return (self.domain_ids == d).nonzero().flatten()

    def holdout(self, trial_seed: int = 0, fraction: float = HOLDOUT) -> Dict[str, List[torch.Tensor]]:
        """{'in': [indices per environment], 'out': [...]}: `split_dataset(env, int(len(env) * fraction),
        seed_hash(trial_seed, env_i))`, out first."""
        out, kept = [], []
        for d in range(len(self.domains)):
            env = self._env(d)
            o, i = split_keys(len(env), int(len(env) * fraction), seed_hash(trial_seed, d))
            out.append(env[o])
            kept.append(env[i])
        return {"in": kept, "out": out}

    def clipood_lists(self, targets: Sequence[int], open_ratio: float = 0.0,
                  fraction: float = HOLDOUT) -> Dict[str, torch.Tensor]:
        """CLIPood's lists (`converter_domainbed.py`): without open classes, train = sources' in, val = sources'
        out, test = targets' out; with `open_ratio` r > 0, base classes = the first int((1 - r) C), each
        environment's base and open images split apart, train / val = sources' base in / out, test = targets' base
        in + out, open = targets' open in + out."""
        cat = lambda xs: torch.cat(xs) if xs else torch.empty(0, dtype=torch.long)     # noqa: E731
        sources = [d for d in range(len(self.domains)) if d not in targets]
        if open_ratio <= 0:
            split = self.holdout(0, fraction)
            return {"train": cat([split["in"][d] for d in sources]), "val": cat([split["out"][d] for d in sources]),
                    "test": cat([split["out"][d] for d in targets])}
        n_base = int((1 - open_ratio) * len(self.classes))
        base = torch.arange(n_base)
        parts: Dict[str, List[torch.Tensor]] = {"train": [], "val": [], "test": [], "open": []}
        for d in range(len(self.domains)):
            env = self._env(d)
            is_base = torch.isin(self.labels[env], base)
            split = {}
            for group, members in (("base", env[is_base]), ("open", env[~is_base])):
                o, i = split_keys(len(members), int(len(members) * fraction), seed_hash(0, d, group))
                split[group] = (members[o], members[i])
            if d in targets:
                parts["test"] += [split["base"][1], split["base"][0]]
                parts["open"] += [split["open"][1], split["open"][0]]
            else:
                parts["train"].append(split["base"][1])
                parts["val"].append(split["base"][0])
        return {k: cat(v) for k, v in parts.items()}

    def base_new_split(self):
        """CLIPood's in-the-wild classes (open ratio 0.5): the first int(C / 2) are base, the rest open."""
        n = int((1 - OPEN_RATIO) * len(self.classes))
        return list(range(n)), list(range(n, len(self.classes)))

    def official_split(self, source_ids, target_ids, protocol, shots, seed):
        """CLIPood's lists (`clipood_lists`): the sources' "in" split trains; their "out" split and the targets'
        test (and open) lists evaluate. Open-class protocols split base and open classes apart (ratio 0.5)."""
        ratio = OPEN_RATIO if protocol in ("open-world", "in-the-wild") else 0.0
        lists = self.clipood_lists(list(target_ids), ratio)
        evaluation = torch.cat([lists[k] for k in ("val", "test", "open") if k in lists]).sort().values
        return lists["train"].sort().values, evaluation, False

    def verify(self, indices: Sequence[int]) -> None:
        verify_images(self.paths, self.folder, indices)

    def load(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index])


__all__ = ["DOMAINBED", "DomainBedDataset", "HOLDOUT", "image_folder", "seed_hash", "split_keys"]
