"""The MCM papers' OOD sets and ImageNet subsets, where deeplearning-wisc/MCM reads them.

- **Far-OOD for ImageNet-1k** (Huang & Li 2021's subsets with the ImageNet classes removed, MCM's Table 1):
  `iNaturalist/`, `SUN/`, `Places/` and `dtd/images/` (Textures) under one OOD root, each a torchvision
  `ImageFolder` (MCM `utils/detection_util.py` `set_ood_loader_ImageNet`, lines 14-35). `--ood-data mcm:ROOT`
  adds the four as far-OOD sets; `--ood-data far:NAME=FOLDER` adds one.
- **The hard near-OOD tasks** (MCM section 4.2): ImageNet-10 against ImageNet-20, both ways. As OOD, MCM reads
  `ImageNet10/train` and `ImageNet20/val` (`detection_util.py` lines 29-32): `--ood-data imagenet10:ROOT` and
  `--ood-data imagenet20:ROOT` add them as near-OOD. As ID, `--data imagenet10:ROOT` (or 20, 100) reads
  `ImageNet10/{train,val}/<wnid>/` with MCM's class names: ImageNet-10's and -20's as MCM writes them
  (`utils/common.py` `obtain_ImageNet10_classes` lines 36-46, sorted by WordNet id; `obtain_ImageNet20_classes`
  lines 49-58), ImageNet-100's from ImageNet's `classnames.txt` (CoOp's file, in the subset's folder or its
  parent; MCM names them from ImageNet's class index, lines 60-73).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from clipood_kit.data.coop_layout import read_classnames
from clipood_kit.data.datasets import DatasetError, DomainDataset, read_image, verify_images
from clipood_kit.data.domainbed_layout import image_folder

MCM_DOC = "deeplearning-wisc/MCM README.md (Data preparation)"
# --ood-data mcm:ROOT -> (set name, folder below ROOT); detection_util.py lines 18-28
MCM_FAR: Tuple[Tuple[str, str], ...] = (("iNaturalist", "iNaturalist"), ("SUN", "SUN"), ("Places", "Places"),
                                        ("Textures", "dtd/images"))
# --ood-data imagenet10:ROOT / imagenet20:ROOT -> the folder MCM reads as OOD (detection_util.py lines 29-32)
MCM_NEAR: Dict[str, str] = {"imagenet10": "ImageNet10/train", "imagenet20": "ImageNet20/val"}
IMAGENET10 = {"n04552348": "warplane", "n04285008": "sports car", "n01530575": "brambling bird",
              "n02123597": "Siamese cat", "n02422699": "antelope", "n02107574": "swiss mountain dog",
              "n01641577": "bull frog", "n03417042": "garbage truck", "n02389026": "horse",
              "n03095699": "container ship"}
IMAGENET20 = {"n04147183": "sailboat", "n02951358": "canoe", "n02782093": "balloon", "n04389033": "tank",
              "n03773504": "missile", "n02917067": "bullet train", "n02317335": "starfish",
              "n01632458": "spotted salamander", "n01630670": "common newt", "n01631663": "eft", "n02391049": "zebra",
              "n01693334": "green lizard", "n01697457": "African crocodile", "n02120079": "Arctic fox",
              "n02114367": "timber wolf", "n02132136": "brown bear", "n03785016": "moped",
              "n04310018": "steam locomotive", "n04266014": "space shuttle", "n04252077": "snowmobile"}
SUBSETS = {"imagenet10": ("ImageNet10", IMAGENET10), "imagenet20": ("ImageNet20", IMAGENET20),
           "imagenet100": ("ImageNet100", None)}


def ood_folders(preset: str, root: str | os.PathLike) -> List[Tuple[str, str, Path]]:
    """(kind, name, folder) of an OOD preset: `mcm` (the four far sets) or `imagenet10` / `imagenet20` (near)."""
    root = Path(root)
    if preset == "mcm":
        found = [("far", name, root / sub) for name, sub in MCM_FAR]
    elif preset in MCM_NEAR:
        found = [("near", SUBSETS[preset][0], root / MCM_NEAR[preset])]
    else:
        raise DatasetError(f"unknown OOD preset {preset!r}; choose mcm, imagenet10 or imagenet20")
    missing = [str(folder) for _, _, folder in found if not folder.is_dir()]
    if missing:
        raise DatasetError(f"--ood-data {preset}:{root}: missing folder(s) {missing}; {MCM_DOC} gives the layout")
    return found


class ImageNetSubset(DomainDataset):
    """MCM's ImageNet-10, -20 or -100 as an ID dataset: one domain, `partition` train / val (= test) from its
    `train/` and `val/` ImageFolders, class names as MCM writes them, template "a photo of a {}."."""

    def __init__(self, root: str | os.PathLike, kind: str):
        if kind not in SUBSETS:
            raise DatasetError(f"unknown ImageNet subset {kind!r}; choose one of {sorted(SUBSETS)}")
        folder_name, names = SUBSETS[kind]
        root = Path(root)
        self.folder = self.root = root / folder_name if (root / folder_name).is_dir() else root
        paths: List[Path] = []
        labels: List[int] = []
        self.partition: Dict[str, torch.Tensor] = {}
        wnids = None
        for part in ("train", "val"):
            base = self.folder / part
            if not base.is_dir():
                raise DatasetError(f"{kind}: {base} is missing; {MCM_DOC} (create_imagenet_subset.py) makes it")
            classes, samples = image_folder(base)
            if wnids is not None and classes != wnids:
                raise DatasetError(f"{kind}: train/ and val/ hold different class folders")
            wnids = classes
            self.partition[part] = torch.arange(len(paths), len(paths) + len(samples))
            paths += [p for p, _ in samples]
            labels += [y for _, y in samples]
        self.partition["test"] = self.partition["val"]
        if names is None:
            path = next((p for p in (self.folder / "classnames.txt", self.folder.parent / "classnames.txt")
                         if p.is_file()), None)
            if path is None:
                raise DatasetError(f"{kind}: no classnames.txt in {self.folder} or its parent; copy ImageNet's "
                                   f"(KaiyangZhou/CoOp DATASETS.md, section ImageNet) to name its classes")
            names = dict(read_classnames(path))
        unknown = [w for w in wnids if w not in names]
        if unknown:
            raise DatasetError(f"{kind}: class folder(s) {unknown[:5]} are not {folder_name} classes ({MCM_DOC})")
        self.raw_classes = [names[w] for w in wnids]
        self.classes = [c.replace("_", " ") for c in self.raw_classes]
        self.domains = [kind]
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.domain_ids = torch.zeros(len(paths), dtype=torch.long)
        self.template = "a photo of a {}."
        self.name = f"{kind}({self.folder.resolve()})"

    def official_split(self, source_ids, target_ids, protocol, shots, seed):
        """MCM's folders: train/ trains (the kit's k-shot rule draws the shots), val/ evaluates."""
        return self.partition["train"], self.partition["val"], False

    def verify(self, indices) -> None:
        verify_images(self.paths, self.folder, indices)

    def load(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index])


__all__ = ["IMAGENET10", "IMAGENET20", "ImageNetSubset", "MCM_FAR", "MCM_NEAR", "ood_folders"]
