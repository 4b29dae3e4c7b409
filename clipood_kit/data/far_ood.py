"""OOD image sets beside an experiment's dataset: the world's far-OOD sets and image folders (`--ood-data`).

The OOD benchmarks keep two kinds of OOD images apart (MCM, Ming et al. 2022; the fine-tuning study, Ming & Li,
IJCV 2023; OpenOOD):

- **near-OOD**: new classes close to the training ones. On the world these are the experiment's new classes: each
  has a sibling of its family among the base classes (`world.base_new_split`); they come from the dataset itself
  (`engine.scoring.OOD_SHIFTS`).
- **far-OOD**: images whose content is none of the classes nor a relative of them, as iNaturalist, SUN, Places
  and Textures are for ImageNet. The world has two, drawn from the world's held-out concepts: things CLIP met in
  pretraining with their own words (`engine.pretrain`: "a sketch of a red spiral", "blue stripes"), as CLIP met
  plants, scenes and textures on the web, but that no task names and no training set holds:
  - `glyphs`: line figures (zigzag, spiral, lattice, wave, chevrons; `world.GLYPHS`) drawn in the experiment's
    source styles, so only the content is new, not the style;
  - `textures`: patterns with no object at all (stripes, checkers, dots, blobs) in the world's colours, the
    world's counterpart of the Textures (DTD) set.
  The sets were designed once, before any method was scored on them, and are not tuned to any result.

A real OOD set is a folder of images, as the MCM code reads one torchvision `ImageFolder` per set
(deeplearning-wisc/MCM `utils/detection_util.py` `set_ood_loader_ImageNet`, lines 14-29). `ImageFolderSet`
reads every image at any depth below the folder: the images `ImageFolder` reads (one level of subfolders, e.g.
iNaturalist/images/*.jpg), and images placed directly in the folder too.

Every set is a `DomainDataset` without classes: label -1, one domain (its name), so it goes through the same
transform and encoder as the dataset's images.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from clipood_kit.core.io import file_sha256
from clipood_kit.data import world
from clipood_kit.data.datasets import IMAGE_EXTENSIONS, DatasetError, DomainDataset, read_image, verify_images

Tensor = torch.Tensor
KINDS = ("near", "far")


# ----------------------------------------------------------------------------------------------------
# glyphs: the world's held-out line figures (world.GLYPHS), drawn in given styles
# ----------------------------------------------------------------------------------------------------
GLYPHS = world.GLYPHS
PATTERNS = world.PATTERNS


def glyphs(n: int, seed: int, styles: Sequence[str], config: world.WorldConfig = world.WorldConfig()) -> Tensor:
    """n glyph images (uint8 N x 3 x H x W), uniform over GLYPHS, the given world styles, colours and sizes."""
    unknown = [s for s in styles if s not in config.styles]
    if not styles or unknown:
        raise ValueError(f"glyphs need world styles among {list(config.styles)}, got {list(styles)}")
    gen = torch.Generator().manual_seed(int(seed))
    kinds = torch.randint(len(GLYPHS), (n,), generator=gen)
    style_ids = torch.tensor([config.styles.index(s) for s in styles])[torch.randint(len(styles), (n,), generator=gen)]
    colours = torch.randint(len(config.colours), (n,), generator=gen)
    sizes = torch.randint(len(config.sizes), (n,), generator=gen)
    return world.render(kinds, style_ids, colours, sizes, config, gen, shapes=list(GLYPHS.values()))


# ----------------------------------------------------------------------------------------------------
# textures: patterns without an object
# ----------------------------------------------------------------------------------------------------
def textures(n: int, seed: int, config: world.WorldConfig = world.WorldConfig()) -> Tensor:
    """n texture images (uint8 N x 3 x H x W): a pattern of PATTERNS at a random angle, period and phase, in two
    random world colours, with a little grain."""
    return texture_images(n, torch.Generator().manual_seed(int(seed)), config)[0]


def texture_images(n: int, gen: torch.Generator, config: world.WorldConfig = world.WorldConfig()):
    """`textures` from a generator: (images, pattern ids into PATTERNS, first colour ids into config.colours)."""
    S = config.image_size
    palette = torch.tensor([world.COLOURS[c] for c in config.colours])
    first = torch.randint(len(palette), (n,), generator=gen)
    second = (first + 1 + torch.randint(len(palette) - 1, (n,), generator=gen)) % len(palette)    # another colour
    pattern = torch.randint(len(PATTERNS), (n,), generator=gen)
    angle = torch.rand(n, generator=gen) * math.pi
    period = 3.0 + 5.0 * torch.rand(n, generator=gen)                   # pixels
    phase = torch.rand(n, 2, generator=gen) * period[:, None]
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    a = cos * xs + sin * ys + phase[:, 0, None, None]
    b = -sin * xs + cos * ys + phase[:, 1, None, None]
    p = period[:, None, None]
    wave_a, wave_b = torch.remainder(a, p) / p, torch.remainder(b, p) / p        # 0..1 within a period
    masks = torch.stack([
        (wave_a < 0.5).float(),                                                  # stripes
        ((wave_a < 0.5) ^ (wave_b < 0.5)).float(),                               # checker
        (((wave_a - 0.5) ** 2 + (wave_b - 0.5) ** 2) <= 0.09).float(),          # dots
        (world._smooth_noise(n, 1, 6, S, gen)[:, 0] > 0.5).float(),             # blobs
    ], dim=1)
    mask = masks[torch.arange(n), pattern][:, None]
    img = mask * palette[first][:, :, None, None] + (1 - mask) * palette[second][:, :, None, None]
    img = img + 0.06 * (torch.rand(n, 1, S, S, generator=gen) - 0.5)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), pattern, first


WORLD_SETS = ("glyphs", "textures")


# ----------------------------------------------------------------------------------------------------
# the sets
# ----------------------------------------------------------------------------------------------------
class OODSet(DomainDataset):
    """Unlabelled images of one OOD set (label -1, domain 0 = the set): `name`, `kind` ('near' or 'far')."""

    def __init__(self, name: str, kind: str, size: int):
        if kind not in KINDS:
            raise ValueError(f"an OOD set's kind is one of {KINDS}, got {kind!r}")
        self.name, self.kind = name, kind
        self.classes, self.domains = [], [name]
        self.labels = torch.full((size,), -1, dtype=torch.long)
        self.domain_ids = torch.zeros(size, dtype=torch.long)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": len(self)}

    def fingerprint(self) -> dict:
        """What the set's images are, for cache keys (a folder adds a digest of its files)."""
        return self.describe()

    def verify(self, indices: Sequence[int] | None = None) -> None:
        """Rendered sets have no files to check."""


class RenderedSet(OODSet):
    """A far-OOD set of the world (WORLD_SETS), rendered from a seed."""

    def __init__(self, name: str, n: int, seed: int, styles: Sequence[str],
                 config: world.WorldConfig = world.WorldConfig()):
        if name not in WORLD_SETS:
            raise ValueError(f"unknown world OOD set {name!r}; the world has {list(WORLD_SETS)}")
        if n < 1:
            raise ValueError(f"an OOD set needs at least one image, got n={n}")
        super().__init__(name, "far", n)
        self.images = glyphs(n, seed, styles, config) if name == "glyphs" else textures(n, seed, config)
        self.identity = {"name": name, "n": n, "seed": seed, "styles": list(styles), "size": config.image_size}

    def describe(self) -> dict:
        return {**super().describe(), **self.identity, "kind": self.kind}

    def load(self, index: int) -> Tensor:
        return self.images[index]


class ImageFolderSet(OODSet):
    """Every image below a folder (any depth, sorted by path): one OOD set named after the folder."""

    def __init__(self, root: str | os.PathLike, kind: str = "far", name: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"OOD folder {self.root} does not exist or is not a folder; pass a folder of images "
                               f"(e.g. iNaturalist/, with images at any depth)")
        self.paths: List[Path] = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                                        and p.is_file() and not any(x.startswith(".") for x in p.relative_to(self.root).parts))
        if not self.paths:
            raise DatasetError(f"OOD folder {self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        super().__init__(name or self.root.resolve().name, kind, len(self.paths))

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root.resolve())}

    def fingerprint(self) -> dict:
        import hashlib
        h = hashlib.sha256()
        for f in self.paths:
            st = f.stat()
            h.update(f"{f.relative_to(self.root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return {**self.describe(), "files": h.hexdigest()[:16]}

    def verify(self, indices: Sequence[int] | None = None) -> None:
        """Every image of the set decodes (`datasets.verify_images`), before any model is loaded."""
        verify_images(self.paths, self.root, range(len(self)) if indices is None else indices)

    def load(self, index: int) -> Tensor:
        return read_image(self.paths[index])


def parse_ood_data(spec: str) -> Tuple[str, str, str]:
    """'[near:|far:][NAME=]FOLDER' -> (kind, name, folder); the kind defaults to far, the name to the folder's.
    A folder whose own path holds '=' is taken whole when it exists; a NAME never holds a path separator."""
    kind = "far"
    for k in KINDS:
        if spec.startswith(f"{k}:"):
            kind, spec = k, spec[len(k) + 1:]
    name, sep, folder = spec.partition("=")
    if not sep or Path(spec).is_dir() or os.sep in name or "/" in name:
        name, folder = "", spec
    if not folder:
        raise ValueError(f"--ood-data needs a folder: '[near:|far:][NAME=]FOLDER', got {spec!r}")
    return kind, name or Path(folder).resolve().name, folder


def expand_ood_data(specs: Sequence[str]) -> List[Tuple[str, str, str]]:
    """(kind, name, folder) of every `--ood-data` value: the MCM presets (`mcm:ROOT`, the four far-OOD sets;
    `imagenet10:ROOT`, `imagenet20:ROOT`, near-OOD; `data.mcm_layout`) expanded, the rest `parse_ood_data`."""
    from clipood_kit.data.mcm_layout import MCM_NEAR, ood_folders
    out = []
    for spec in specs:
        preset, sep, root = spec.partition(":")
        if sep and root and (preset == "mcm" or preset in MCM_NEAR):
            out += [(kind, name, str(folder)) for kind, name, folder in ood_folders(preset, root)]
        else:
            out.append(parse_ood_data(spec))
    return out


def open_ood_sets(world_sets: Sequence[str], folders: Sequence[str], n: int, seed: int,
                  styles: Sequence[str], id_data: DomainDataset | None = None,
                  world_config: world.WorldConfig | None = None) -> Dict[str, OODSet]:
    """The experiment's OOD sets by name: the world's rendered ones (n images each, seeded, in `styles` of
    `world_config`) and the folders (`parse_ood_data` specs). Names must be unique and must not be a near shift of
    the dataset; a folder that shares images with the ID dataset `id_data` is refused (`check_disjoint`)."""
    sets: Dict[str, OODSet] = {}
    for i, name in enumerate(world_sets):
        sets[name] = RenderedSet(name, n, seed * 1000 + 17 + i, styles, world_config or world.WorldConfig())
    for kind, name, folder in expand_ood_data(folders):
        if name in sets:
            raise ValueError(f"two OOD sets are named {name!r}; name them apart with --ood-data NAME=FOLDER")
        sets[name] = ImageFolderSet(folder, kind, name)
        if id_data is not None:
            check_disjoint(sets[name], id_data)
    return sets


def check_disjoint(ood: "ImageFolderSet", id_data: DomainDataset) -> None:
    """Refuse an OOD folder that shares images with the ID dataset: by path (the dataset's root or one of its
    domains given as OOD) or by content (the same file bytes elsewhere; only files of equal size are hashed, so
    the check reads few files). An OOD set that holds ID images scores them as OOD and still gives plausible
    AUROCs."""
    id_paths = getattr(id_data, "paths", None)
    if not id_paths:
        _check_disjoint_pixels(ood, id_data)
        return
    root = Path(id_data.root).resolve()
    ood_root = ood.root.resolve()
    if ood_root == root or root in ood_root.parents or ood_root in root.parents:
        raise DatasetError(f"OOD set {ood.name!r} ({ood.root}) overlaps the ID dataset's folder {id_data.root}: an OOD "
                           f"set must hold none of the ID images; pass a folder outside {id_data.root}")
    resolved = {p.resolve() for p in id_paths}
    shared = [p for p in ood.paths if p.resolve() in resolved]
    if not shared:
        by_size: Dict[int, List[Path]] = {}
        for p in id_paths:
            by_size.setdefault(p.stat().st_size, []).append(p)
        sizes = {p: p.stat().st_size for p in ood.paths}
        candidates = [p for p in ood.paths if sizes[p] in by_size]
        id_digests = {file_sha256(q) for p in candidates for q in by_size[sizes[p]]}
        shared = [p for p in candidates if file_sha256(p) in id_digests]
    if shared:
        raise DatasetError(f"OOD set {ood.name!r} ({ood.root}) shares {len(shared)} image(s) with the ID dataset "
                           f"{id_data.root} (e.g. {shared[0]}): an OOD set must hold none of the ID images; remove "
                           f"them or pass another folder")


def _check_disjoint_pixels(ood: "ImageFolderSet", id_data: DomainDataset) -> None:
    """The same check for an in-memory ID dataset (the world): an OOD file whose decoded pixels equal an ID
    image's (an `export-world` folder of the same seed). Only files of the ID images' size are decoded."""
    from PIL import Image
    images = getattr(id_data, "images", None)
    if images is None or not len(images):
        return
    import hashlib
    size = (images.shape[-1], images.shape[-2])
    same_size = []
    for p in ood.paths:
        try:
            with Image.open(p) as img:
                if img.size == size:
                    same_size.append(p)
        except OSError:
            continue                                  # `verify` names unreadable files
    if not same_size:
        return
    digest = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()     # noqa: E731
    id_digests = {digest(img) for img in images}
    shared = [p for p in same_size if digest(read_image(p)) in id_digests]
    if shared:
        raise DatasetError(f"OOD set {ood.name!r} ({ood.root}) shares {len(shared)} image(s) with the ID dataset "
                           f"{id_data.name} (e.g. {shared[0]}, the same pixels): an OOD set must hold none of the ID "
                           f"images; pass another folder")
