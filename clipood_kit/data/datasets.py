"""Datasets with domains: the embedded world and DomainBed-style image folders, behind one interface.

Both yield `(image, label, domain)` where image is whatever the transform makes of a uint8 C x H x W tensor
(no transform: the uint8 tensor itself). Both expose `classes`, `domains` (names, sorted), and the per-sample
`labels` and `domain_ids` tensors that the splits in `clipood_kit.data.splits` work on.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from clipood_kit.core.io import current_umask
from clipood_kit.data import splits
from clipood_kit.data import world as world_mod

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


class DatasetError(ValueError):
    """A dataset folder or request that cannot be used; the message names the problem and the fix."""


class DomainDataset(Dataset):
    """Common interface: names of classes and domains, per-sample labels and domain ids."""

    classes: List[str]
    domains: List[str]
    labels: torch.Tensor
    domain_ids: torch.Tensor
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int):
        return self.load(index), int(self.labels[index]), int(self.domain_ids[index])

    families: Optional[dict] = None   # family name -> its class names, where a taxonomy is known

    def base_new_split(self):
        """(base class ids, new class ids). Folders: the sorted halves (`splits.base_new_classes`)."""
        return splits.base_new_classes(len(self.classes))

    def official_split(self, source_ids: Sequence[int], target_ids: Sequence[int], protocol: str,
                       shots: Optional[int], seed: int) -> Optional[tuple]:
        """(training pool, evaluation indices, shots already drawn) by the dataset's official rule (CoOp's lists,
        DomainBed's hold-out), or None: the kit's own hold-out (`splits.holdout_split`) then applies."""
        return None

    def describe(self) -> dict:
        """JSON-ready identity of the dataset (for results and cache keys)."""
        return {"name": self.name, "classes": list(self.classes), "domains": list(self.domains), "size": len(self)}

    def verify(self, indices: Sequence[int]) -> None:
        """Raise DatasetError naming unreadable images among `indices` (in-memory datasets have none)."""


class WorldDataset(DomainDataset):
    """The embedded world as a balanced grid: `per_cell` images for every (style, class), seeded."""

    def __init__(self, per_cell: int = 40, seed: int = 0, config: world_mod.WorldConfig = world_mod.WorldConfig()):
        batch = world_mod.grid(per_cell, seed, config)
        self.images = batch.images
        self.labels = batch.labels
        self.domain_ids = batch.domains
        self.classes = list(config.classes)
        self.domains = list(config.styles)
        self.per_cell, self.seed, self.config = per_cell, seed, config
        self.name = f"world(per_cell={per_cell},seed={seed},size={config.image_size})"
        self.families = {f: [c for c in members if c in self.classes] for f, members in world_mod.FAMILIES.items()}

    def base_new_split(self):
        """(base class ids, new class ids): the taxonomy rule of `world.base_new_split` (each family on both sides)."""
        return world_mod.base_new_split(self.classes)

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]


class FolderDataset(DomainDataset):
    """A DomainBed-style tree `root/<domain>/<class>/<image>` (PACS, VLCS, OfficeHome, TerraIncognita,
    DomainNet, or `export_world`'s output). Domains and classes are the sorted folder names; samples are
    ordered by (domain, class, file name), so every split built on them is deterministic.
    """

    def __init__(self, root: str | os.PathLike, domains: Optional[Sequence[str]] = None):
        self.root = Path(root)
        if self.root.is_file():
            raise DatasetError(f"{self.root} is a file, not a dataset folder; pass the root of a DomainBed-style "
                               f"tree root/<domain>/<class>/<image>")
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; pass the root of a DomainBed-style tree "
                               f"root/<domain>/<class>/<image> (e.g. clipood-kit export-world {self.root})")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DatasetError(f"{self.root} has no domain folders; expected root/<domain>/<class>/<image>")
        if domains is not None:
            missing = [d for d in domains if d not in found]
            if missing:
                raise DatasetError(f"domain(s) {missing} missing in {self.root}; available domains: {found}")
            found = sorted(domains)
        self.domains = found
        per_domain = {}
        for d in self.domains:
            class_dirs = sorted(p for p in (self.root / d).iterdir() if p.is_dir() and not p.name.startswith("."))
            files = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS) for c in class_dirs}
            if not files or not any(files.values()):
                raise DatasetError(f"domain '{d}' in {self.root} is empty: it needs class folders with images "
                                   f"({', '.join(IMAGE_EXTENSIONS)})")
            empty = [c for c, fs in files.items() if not fs]
            if empty:
                raise DatasetError(f"class folder(s) {empty} of domain '{d}' hold no images; add images or remove them")
            per_domain[d] = files
        reference = set(per_domain[self.domains[0]])
        for d in self.domains[1:]:
            classes = set(per_domain[d])
            if classes != reference:
                only_ref = sorted(reference - classes)
                only_here = sorted(classes - reference)
                raise DatasetError(
                    f"class sets differ between domains '{self.domains[0]}' and '{d}': only in '{self.domains[0]}': "
                    f"{only_ref}; only in '{d}': {only_here}. Every domain needs the same class folders.")
        self.classes = sorted(reference)
        if len(self.classes) < 2:
            raise DatasetError(f"{self.root} has one class ({self.classes[0]}): a classifier needs at least 2 classes "
                               f"(with one, every image is 'right' and accuracy is 100 %); add class folders "
                               f"root/<domain>/<class>/")
        paths, labels, doms = [], [], []
        for di, d in enumerate(self.domains):
            for ci, c in enumerate(self.classes):
                for f in per_domain[d][c]:
                    paths.append(f)
                    labels.append(ci)
                    doms.append(di)
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.domain_ids = torch.tensor(doms, dtype=torch.long)
        self.name = f"folder({self.root.resolve()})"

    def verify(self, indices: Sequence[int]) -> None:
        verify_images(self.paths, self.root, indices)

    def load(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index])


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 3 x H x W (RGB); a clear error names a file that cannot be read."""
    from torchvision.transforms.functional import pil_to_tensor      # torchvision costs 1.3 s to import: on use
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. Replace or delete the file.") from e


def verify_images(paths: Sequence[Path], root: Path, indices: Sequence[int], workers: int = 8) -> None:
    """Check that every image among `indices` decodes (its pixels, not only its header: a truncated JPEG has a
    good header), in parallel threads, so a broken file is found before any model is loaded or trained, rather
    than in the middle of the run or after. The error lists every broken file."""
    from concurrent.futures import ThreadPoolExecutor

    def bad(i: int) -> Optional[str]:
        try:
            with Image.open(paths[i]) as img:
                img.load()
            return None
        except Exception as e:      # noqa: BLE001 - any failure to open is a broken file
            return f"{paths[i]} ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"

    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
        broken = [b for b in pool.map(bad, [int(i) for i in indices]) if b]
    if broken:
        raise DatasetError(f"{len(broken)} unreadable image(s) in {root}: {'; '.join(broken)}. "
                           f"Replace or delete them, then run again")


class TransformedSubset(Dataset):
    """Indices into a DomainDataset with a transform applied to each image."""

    def __init__(self, dataset: DomainDataset, indices: Sequence[int], transform: Transform = None):
        self.dataset = dataset
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label, domain = self.dataset[int(self.indices[i])]
        if self.transform is not None:
            image = self.transform(image)
        return image, label, domain

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.labels[self.indices]

    @property
    def domain_ids(self) -> torch.Tensor:
        return self.dataset.domain_ids[self.indices]


def export_world(root: str | os.PathLike, per_cell: int = 40, seed: int = 0,
                 config: world_mod.WorldConfig = world_mod.WorldConfig(), overwrite: bool = False) -> Path:
    """Write the world grid as PNG files `root/<style>/<class>/<n>.png` (a DomainBed-style tree).

    The tree is written into a temporary folder beside `root` and renamed into place, so a failed export
    leaves nothing half-written.
    """
    root = Path(root)
    if root.is_file():
        raise DatasetError(f"{root} is a file; give a folder to export the world into")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DatasetError(f"{root} exists and is not empty; choose another folder or pass overwrite=True "
                               f"(--overwrite)")
    root.parent.mkdir(parents=True, exist_ok=True)
    data = WorldDataset(per_cell, seed, config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    tmp.chmod(0o777 & ~current_umask())     # mkdtemp makes a 0700 folder; the export is for others to read too
    try:
        counters = {}
        for i in range(len(data)):
            d, c = data.domains[int(data.domain_ids[i])], data.classes[int(data.labels[i])]
            n = counters.get((d, c), 0)
            counters[(d, c)] = n + 1
            folder = tmp / d / c
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(folder / f"{n:05d}.png")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
