"""CoOp's on-disk layouts: the eleven base-to-new datasets and ImageNet's four variants, read as CoOp reads them.

Researchers keep these datasets as KaiyangZhou/CoOp `DATASETS.md` says (one folder per dataset under `$DATA`), and
CoOp, CoCoOp, KgCoOp, OGEN and CLIPood (thuml/CLIPood `converter_dassl.py`) read them with CoOp's readers
(`datasets/*.py`, on Dassl's `DatasetBase`). This module reproduces what those readers select:

- **train / val / test lists**: `split_zhou_<Name>.json` (entries `[relative image path, label, class name]`,
  `OxfordPets.read_split`, CoOp `datasets/oxford_pets.py` lines 122-138) for nine datasets; FGVC-Aircraft's
  `variants.txt` and `images_variant_{train,val,test}.txt` (`datasets/fgvc_aircraft.py` lines 22-31, 56-71);
  ImageNet's `images/train` and `images/val` folders with `classnames.txt` (`datasets/imagenet.py` lines 24-35,
  63-91: val is the test set, and also the val set); the variants' folders with ImageNet's `classnames.txt`
  (`imagenetv2.py` 31-46: folders `0`..`999`; `imagenet_sketch.py` 30-43; `imagenet_a.py` and `imagenet_r.py`
  32-46: the 200 WordNet-id folders in sorted order, labelled 0..199).
- **few-shot picks** (`fewshot`): the `split_fewshot/shot_<K>-seed_<S>.pkl` file when present (its `train` and
  `val` lists), else Dassl's rule (`DatasetBase.generate_fewshot_dataset`, Dassl.pytorch
  `dassl/data/datasets/base_dataset.py` lines 167-209): Python's `random` seeded with the run's seed
  (`set_random_seed`), then per label, in the order labels first appear in the list, `random.sample(items, K)`
  (all items when fewer), first on train with K, then on val with min(K, 4) (CoOp `oxford_pets.py` lines 33-49).
  ImageNet draws train only (`imagenet.py` lines 41-56).
- **base / new** (`base_new_split`): `OxfordPets.subsample_classes` (`oxford_pets.py` lines 140-186): the sorted
  labels of the train list, the first ceil(n / 2) are base.
- **class names**: the names the lists carry (Dassl's `get_lab2cname`, `base_dataset.py` lines 107-120, over the
  train list), with `_` as a space in prompts (CoOp `trainers/coop.py` line 98, CLIPood `engine.py` line 118);
  CoOp's own renames are already in its split files (EuroSAT's `NEW_CNAMES`, `datasets/eurosat.py` lines 10-21;
  Caltech101's lines 11-16). ImageNet without `classnames.txt` takes open_clip's curated names
  (`open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES`, the same CLIP notebook names) by sorted folder order.
- **templates**: thuml/CLIPood `converter_dassl.py` `CUSTOM_TEMPLATES` (lines 25-41), one per dataset.

Where CoOp lists a folder without sorting (`listdir_nohidden`, Dassl `dassl/utils/tools.py` lines 135-145:
`os.listdir` order; ImageNet and its variants' images), this module keeps that order too, so on the same disk it
picks the same few-shot images as the official code; CoOp's `preprocessed.pkl` / `split_fewshot` files fix the
order across machines, and this module reads them. Without a split file the nine split-file datasets stop with the
file to download: CoOp's fallback splits (`read_and_split_data`) shuffle an unsorted listing, so no two machines
agree on them and no paper's numbers come from them.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from clipood_kit.data.datasets import DatasetError, DomainDataset, read_image, verify_images

COOP_DOC = "KaiyangZhou/CoOp DATASETS.md"


@dataclass(frozen=True)
class Item:
    """One image of a list: its path relative to the dataset's image folder, its label, its class name."""
    path: str
    label: int
    classname: str


@dataclass(frozen=True)
class Layout:
    """Where a dataset lives under `$DATA` and how CoOp reads it."""
    kind: str                   # the --data KIND
    name: str                   # Dassl's dataset name (the CUSTOM_TEMPLATES key)
    folder: str                 # $DATA/<folder>
    image_dir: str              # the images, below the folder ("" = the folder itself)
    reader: str                 # split-json | fgvc | imagenet | imagenetv2 | imagenet-folders
    template: str               # thuml/CLIPood converter_dassl.py CUSTOM_TEMPLATES
    source: str                 # the official reader
    split_file: Optional[str] = None
    test_only: bool = False     # a variant: evaluated with ImageNet's classes, never trained on
    ignored: Tuple[str, ...] = ()

    @property
    def split_name(self) -> str:
        return f"split_zhou_{self.name}.json"


def _split(kind, name, folder, image_dir, template, source):
    return Layout(kind, name, folder, image_dir, "split-json", template, source, split_file=f"split_zhou_{name}.json")


LAYOUTS: Dict[str, Layout] = {layout.kind: layout for layout in (
    Layout("imagenet", "ImageNet", "imagenet", "images", "imagenet", "a photo of a {}.", "CoOp datasets/imagenet.py"),
    _split("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "a photo of a {}.",
           "CoOp datasets/caltech101.py"),
    _split("oxfordpets", "OxfordPets", "oxford_pets", "images", "a photo of a {}, a type of pet.",
           "CoOp datasets/oxford_pets.py"),
    _split("stanfordcars", "StanfordCars", "stanford_cars", "", "a photo of a {}.", "CoOp datasets/stanford_cars.py"),
    _split("oxfordflowers", "OxfordFlowers", "oxford_flowers", "jpg", "a photo of a {}, a type of flower.",
           "CoOp datasets/oxford_flowers.py"),
    _split("food101", "Food101", "food-101", "images", "a photo of {}, a type of food.", "CoOp datasets/food101.py"),
    Layout("fgvcaircraft", "FGVCAircraft", "fgvc_aircraft", "images", "fgvc", "a photo of a {}, a type of aircraft.",
           "CoOp datasets/fgvc_aircraft.py"),
    _split("sun397", "SUN397", "sun397", "SUN397", "a photo of a {}.", "CoOp datasets/sun397.py"),
    _split("dtd", "DescribableTextures", "dtd", "images", "{} texture.", "CoOp datasets/dtd.py"),
    _split("eurosat", "EuroSAT", "eurosat", "2750", "a centered satellite photo of {}.", "CoOp datasets/eurosat.py"),
    _split("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "a photo of a person doing {}.",
           "CoOp datasets/ucf101.py"),
    Layout("imagenetv2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "imagenetv2",
           "a photo of a {}.", "CoOp datasets/imagenetv2.py", test_only=True),
    Layout("imagenet-sketch", "ImageNetSketch", "imagenet-sketch", "images", "imagenet-folders", "a photo of a {}.",
           "CoOp datasets/imagenet_sketch.py", test_only=True),
    Layout("imagenet-a", "ImageNetA", "imagenet-adversarial", "imagenet-a", "imagenet-folders", "a photo of a {}.",
           "CoOp datasets/imagenet_a.py", test_only=True, ignored=("README.txt",)),
    Layout("imagenet-r", "ImageNetR", "imagenet-rendition", "imagenet-r", "imagenet-folders", "a photo of a {}.",
           "CoOp datasets/imagenet_r.py", test_only=True, ignored=("README.txt",)),
)}
BASE_TO_NEW = tuple(k for k, v in LAYOUTS.items() if not v.test_only)      # CoOp's eleven
IMAGENET_VARIANTS = tuple(k for k, v in LAYOUTS.items() if v.test_only)


def _missing(path: Path, layout: Layout, what: str) -> DatasetError:
    return DatasetError(f"{layout.kind}: {what} {path} is missing; {COOP_DOC} section {layout.name} gives the "
                        f"layout and the file")


def listdir_nohidden(path: Path, sort: bool = False) -> List[str]:
    """Dassl's listing (`dassl/utils/tools.py` lines 135-145): names not starting with '.', in `os.listdir` order
    unless sorted."""
    names = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(names) if sort else names


def dataset_folder(root: str | os.PathLike, layout: Layout) -> Path:
    """The dataset's folder: `root/<folder>` ($DATA given) or `root` itself (the dataset's own folder given)."""
    root = Path(root)
    if (root / layout.folder).is_dir():
        return root / layout.folder
    if root.name == layout.folder or (root / (layout.image_dir or ".")).is_dir():
        return root
    raise DatasetError(f"{layout.kind}: no folder {root / layout.folder}; pass $DATA (the folder holding "
                       f"{layout.folder}/) or {layout.folder}/ itself ({COOP_DOC} section {layout.name})")


# ----------------------------------------------------------------------------------------------------
# the lists, per reader
# ----------------------------------------------------------------------------------------------------
def read_split_file(path: Path, layout: Layout) -> Dict[str, List[Item]]:
    """`split_zhou_<Name>.json`: {'train', 'val', 'test'} lists of `[relative path, label, class name]`."""
    if not path.is_file():
        raise _missing(path, layout, "split file")
    try:
        split = json.loads(path.read_text())
        return {part: [Item(str(p), int(y), str(c)) for p, y, c in split[part]] for part in ("train", "val", "test")}
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{layout.kind}: {path} is not a CoOp split file ({type(e).__name__}: {e}); it holds "
                           f"'train', 'val' and 'test' lists of [path, label, class name] ({COOP_DOC})") from e


def read_classnames(path: Path) -> "OrderedDict[str, str]":
    """ImageNet's `classnames.txt`: `<wnid> <class name>` per line, in file order (CoOp `imagenet.py` 63-76)."""
    names: "OrderedDict[str, str]" = OrderedDict()
    for line in path.read_text().splitlines():
        parts = line.strip().split(" ")
        if parts and parts[0]:
            names[parts[0]] = " ".join(parts[1:])
    return names


def read_fgvc(folder: Path, layout: Layout) -> Dict[str, List[Item]]:
    """FGVC-Aircraft: labels from `variants.txt` order; `images_variant_<part>.txt` lines `<image id> <variant>`."""
    variants = folder / "variants.txt"
    if not variants.is_file():
        raise _missing(variants, layout, "variant list")
    names = [line.strip() for line in variants.read_text().splitlines()]
    label = {c: i for i, c in enumerate(names)}
    out = {}
    for part in ("train", "val", "test"):
        path = folder / f"images_variant_{part}.txt"
        if not path.is_file():
            raise _missing(path, layout, "image list")
        items = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            fields = line.strip().split(" ")
            name = " ".join(fields[1:])
            if name not in label:
                raise DatasetError(f"fgvcaircraft: {path} line {n} names variant {name!r}, which variants.txt does "
                                   f"not list ({COOP_DOC} section FGVCAircraft)")
            items.append(Item(fields[0] + ".jpg", label[name], name))
        out[part] = items
    return out


def imagenet_names(folder: Path, wnids: Sequence[str], layout: Layout) -> Dict[str, str]:
    """WordNet id -> class name: `classnames.txt` in the folder, else (ImageNet's 1,000 folders only) open_clip's
    curated names in sorted-id order."""
    path = folder / "classnames.txt"
    if path.is_file():
        names = read_classnames(path)
        unknown = [w for w in wnids if w not in names]
        if unknown:
            raise DatasetError(f"{layout.kind}: {path} has no name for folder(s) {unknown[:5]}"
                               f"{' ...' if len(unknown) > 5 else ''}; use ImageNet's classnames.txt ({COOP_DOC})")
        return dict(names)
    if layout.kind == "imagenet" and len(wnids) == 1000:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        return dict(zip(sorted(wnids), IMAGENET_CLASSNAMES))
    raise _missing(path, layout, "class-name file (copy ImageNet's classnames.txt there)")


def _class_folder(folder: Path, layout: Layout, sub: str = "") -> Path:
    path = folder / layout.image_dir / sub if sub else folder / layout.image_dir
    if not path.is_dir():
        raise _missing(path, layout, "image folder")
    return path


def read_imagenet(folder: Path, layout: Layout) -> Dict[str, List[Item]]:
    """ImageNet: `images/train/<wnid>/` and `images/val/<wnid>/`, labels by sorted folder; val is the test set."""
    parts = {}
    for part, sub in (("train", "train"), ("test", "val")):
        base = _class_folder(folder, layout, sub)
        wnids = sorted(f.name for f in os.scandir(base) if f.is_dir())
        names = imagenet_names(folder, wnids, layout)
        parts[part] = [Item(f"{sub}/{w}/{f}", y, names[w]) for y, w in enumerate(wnids)
                       for f in listdir_nohidden(base / w)]
    return {"train": parts["train"], "val": parts["test"], "test": parts["test"],
            "names": [names[w] for w in wnids], "wnids": wnids}


def read_imagenetv2(folder: Path, layout: Layout) -> Dict[str, List[Item]]:
    """ImageNet-V2: folders `0` .. `999` (the label), named through ImageNet's classnames.txt order."""
    base = _class_folder(folder, layout)
    path = folder / "classnames.txt"
    if path.is_file():
        names = list(read_classnames(path).values())
        if len(names) != 1000:
            raise DatasetError(f"imagenetv2: {path} names {len(names)} classes, not ImageNet's 1,000; copy "
                               f"ImageNet's classnames.txt ({COOP_DOC} section ImageNetV2)")
    else:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        names = list(IMAGENET_CLASSNAMES)
    missing = [str(y) for y in range(1000) if not (base / str(y)).is_dir()]
    if missing:
        raise DatasetError(f"imagenetv2: {len(missing)} of the folders 0..999 are missing in {base} (first: "
                           f"{missing[:3]}); {COOP_DOC} section ImageNetV2")
    items = [Item(f"{y}/{f}", y, names[y]) for y in range(1000) for f in listdir_nohidden(base / str(y))]
    return {"train": [], "val": [], "test": items, "names": names}


def read_imagenet_folders(folder: Path, layout: Layout) -> Dict[str, List[Item]]:
    """ImageNet-Sketch, -A, -R: one folder per WordNet id, sorted, labelled in that order (200 for -A and -R)."""
    base = _class_folder(folder, layout)
    wnids = [f for f in listdir_nohidden(base, sort=True) if f not in layout.ignored and (base / f).is_dir()]
    names = imagenet_names(folder, wnids, layout)
    items = [Item(f"{w}/{f}", y, names[w]) for y, w in enumerate(wnids) for f in listdir_nohidden(base / w)]
    return {"train": [], "val": [], "test": items, "names": [names[w] for w in wnids], "wnids": wnids}


def read_lists(folder: Path, layout: Layout) -> Dict[str, list]:
    """The train / val / test lists of a dataset, as its CoOp reader builds them (and 'names', every class name by
    label, for the folder readers)."""
    if layout.reader == "split-json":
        return read_split_file(folder / layout.split_file, layout)
    return {"fgvc": read_fgvc, "imagenet": read_imagenet, "imagenetv2": read_imagenetv2,
            "imagenet-folders": read_imagenet_folders}[layout.reader](folder, layout)


# ----------------------------------------------------------------------------------------------------
# Dassl's selection rules
# ----------------------------------------------------------------------------------------------------
def generate_fewshot(items: Sequence[Item], shots: int, rng: random.Random) -> List[Item]:
    """Dassl's `generate_fewshot_dataset` on one list: per label (in first-appearance order), `rng.sample` of
    `shots` items, or all of them when fewer (repeat=False)."""
    by_label: Dict[int, List[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    out: List[Item] = []
    for members in by_label.values():
        out.extend(rng.sample(members, shots) if len(members) >= shots else members)
    return out


def lab2cname(items: Sequence[Item]) -> List[str]:
    """Dassl's `get_lab2cname`: the class names by sorted label (the last name seen wins, as in a dict)."""
    mapping = {item.label: item.classname for item in items}
    return [mapping[y] for y in sorted(mapping)]


def subsample_halves(labels: Sequence[int]) -> Tuple[List[int], List[int]]:
    """CoOp's `subsample_classes`: the sorted labels, first ceil(n / 2) base, the rest new."""
    ordered = sorted(set(int(y) for y in labels))
    m = math.ceil(len(ordered) / 2)
    return ordered[:m], ordered[m:]


class _Datum:
    """Stands in for Dassl's `Datum` when reading a `split_fewshot` pickle (its attributes only, no code)."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _FewshotUnpickler(pickle.Unpickler):
    """Reads Dassl's few-shot pickles: only `Datum` (as `_Datum`) and builtins; anything else is refused."""

    def find_class(self, module, name):
        if name == "Datum" and module.startswith("dassl.data.datasets"):
            return _Datum
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a few-shot file (only Dassl's Datum)")


def read_fewshot_pickle(path: Path) -> Dict[str, List[Tuple[str, int]]]:
    """A `split_fewshot/shot_<K>-seed_<S>.pkl`: {part: [(image path as written, label)]}."""
    try:
        with open(path, "rb") as f:
            data = _FewshotUnpickler(f).load()
        return {part: [(str(d._impath), int(d._label)) for d in data[part]] for part in data}
    except Exception as e:      # noqa: BLE001 - any failure names the file
        raise DatasetError(f"cannot read the few-shot file {path} ({type(e).__name__}: {e}); delete it to draw the "
                           f"shots by Dassl's rule, or replace it with CoOp's") from e


# ----------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------
class CoOpDataset(DomainDataset):
    """A CoOp-layout dataset as one domain (its kind), every image of its train, val and test lists.

    `partition`: {'train', 'val', 'test'} -> indices (ImageNet's val is its test list); `fewshot(shots, seed)`:
    the few-shot (train, val) indices; `base_new_split()`: CoOp's halves; `template`: its CUSTOM_TEMPLATES entry;
    `classes`: the class names for prompts (`_` as a space), `raw_classes`: as the lists write them."""

    def __init__(self, root: str | os.PathLike, kind: str):
        if kind not in LAYOUTS:
            raise DatasetError(f"unknown CoOp dataset {kind!r}; choose one of {sorted(LAYOUTS)}")
        self.layout = layout = LAYOUTS[kind]
        self.folder = self.root = dataset_folder(root, layout)
        self.image_root = self.folder / layout.image_dir if layout.image_dir else self.folder
        lists = read_lists(self.folder, layout)
        order = ("train", "test") if lists["val"] is lists["test"] else ("train", "val", "test")
        items: List[Item] = []
        self.partition: Dict[str, torch.Tensor] = {}
        for part in order:
            self.partition[part] = torch.arange(len(items), len(items) + len(lists[part]))
            items.extend(lists[part])
        if "val" not in self.partition:
            self.partition["val"] = self.partition["test"]
        if not items:
            raise DatasetError(f"{kind}: {self.folder} lists no images ({COOP_DOC} section {layout.name})")
        self.items = items
        # the readers of folders name every class (also one without images); the lists name those they hold
        self.raw_classes = list(lists.get("names") or lab2cname(lists["train"] or lists["test"]))
        count = max(item.label for item in items) + 1
        if len(self.raw_classes) < count or ("names" not in lists and len(self.raw_classes) != count):
            raise DatasetError(f"{kind}: the lists use labels 0..{count - 1} but name {len(self.raw_classes)} "
                               f"classes; the split file is damaged ({COOP_DOC})")
        self.classes = [c.replace("_", " ") for c in self.raw_classes]
        self.wnids = lists.get("wnids")          # WordNet ids by label (ImageNet and its folder variants)
        self.domains = [kind]
        self.labels = torch.tensor([item.label for item in items], dtype=torch.long)
        self.domain_ids = torch.zeros(len(items), dtype=torch.long)
        self.paths = [self.image_root / item.path for item in items]
        self.template = layout.template
        self.name = f"{kind}({self.folder.resolve()})"

    def base_new_split(self):
        return subsample_halves(self.labels[self.partition["train"] if len(self.partition["train"])
                                            else self.partition["test"]].tolist())

    def official_split(self, source_ids, target_ids, protocol, shots, seed):
        """CoOp's lists: the few-shot train list (`fewshot`) or the whole train list; the test list evaluates."""
        if self.layout.test_only:
            return torch.empty(0, dtype=torch.long), self.partition["test"], True
        train = self.fewshot(int(shots), int(seed))[0] if shots else self.partition["train"]
        return train.sort().values, self.partition["test"], True

    def fewshot_file(self, shots: int, seed: int) -> Path:
        return self.folder / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"

    def fewshot(self, shots: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices of the few-shot lists: CoOp's file when present, else Dassl's rule."""
        if self.layout.test_only:
            raise DatasetError(f"{self.layout.kind} is a test-only variant of ImageNet; train on imagenet")
        path = self.fewshot_file(shots, seed)
        if path.is_file():
            return self._from_pickle(path)
        rng = random.Random(seed)
        parts = ("train",) if self.layout.reader == "imagenet" else ("train", "val")
        picked = {}
        for part in parts:
            pool = [self.items[i] for i in self.partition[part].tolist()]
            chosen = generate_fewshot(pool, shots if part == "train" else min(shots, 4), rng)
            where = {id(item): int(i) for item, i in zip(pool, self.partition[part].tolist())}
            picked[part] = torch.tensor([where[id(item)] for item in chosen], dtype=torch.long)
        return picked["train"], picked.get("val", self.partition["val"])

    def _from_pickle(self, path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
        data = read_fewshot_pickle(path)
        index = {str(p).replace(os.sep, "/"): i for i, p in enumerate(item.path for item in self.items)}
        out = []
        for part in ("train", "val"):
            if part not in data:
                out.append(self.partition["val"])
                continue
            found = []
            for written, label in data[part]:
                parts = written.replace("\\", "/").split("/")
                hit = next((index[t] for t in ("/".join(parts[k:]) for k in range(len(parts))) if t in index), None)
                if hit is None or int(self.labels[hit]) != label:
                    raise DatasetError(f"the few-shot file {path} names {written} (label {label}), which the "
                                       f"dataset's lists do not hold; it belongs to another split: delete it")
                found.append(hit)
            out.append(torch.tensor(found, dtype=torch.long))
        return out[0], out[1]

    def verify(self, indices: Sequence[int]) -> None:
        verify_images(self.paths, self.folder, indices)

    def load(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index])


class WithVariants(DomainDataset):
    """ImageNet and its variants in one dataset, for evaluating an ImageNet run on ImageNet-V2, -Sketch, -A and -R
    with ImageNet's classifier (as WiSE-FT, FLYP and CLIPood's robustness tables do): every variant is an extra,
    evaluation-only domain, its labels mapped to ImageNet's (by WordNet id; ImageNet-V2's folders are ImageNet's
    label numbers). `domain_classes`: the classes a variant holds, the only ones its images are classified among
    (ImageNet-A and -R: their 200, as CoOp's readers label them, `imagenet_a.py` / `imagenet_r.py` lines 32-46)."""

    def __init__(self, main: "CoOpDataset", variants: Sequence["CoOpDataset"]):
        if main.layout.kind != "imagenet":
            raise DatasetError(f"--eval-data adds ImageNet's variants to an ImageNet run; the data is "
                               f"{main.layout.kind}: pass --data imagenet:ROOT")
        self.main, self.variants = main, list(variants)
        self.classes, self.raw_classes, self.template = main.classes, main.raw_classes, main.template
        self.root, self.folder, self.name = main.root, main.folder, main.name
        self.domains = list(main.domains)
        paths, labels, domains = list(main.paths), [main.labels], [main.domain_ids]
        self.domain_classes: Dict[int, List[int]] = {}
        by_wnid = {w: i for i, w in enumerate(main.wnids or [])}
        for v in self.variants:
            if not v.layout.test_only:
                raise DatasetError(f"--eval-data {v.layout.kind}: only ImageNet's variants are evaluation sets "
                                   f"({', '.join(IMAGENET_VARIANTS)})")
            if v.layout.kind in self.domains:
                raise DatasetError(f"--eval-data names {v.layout.kind} twice")
            if v.wnids is not None:
                missing = [w for w in v.wnids if w not in by_wnid]
                if missing:
                    raise DatasetError(f"{v.layout.kind}: class folder(s) {missing[:3]} are not ImageNet classes")
                mapping = torch.tensor([by_wnid[w] for w in v.wnids])
            else:                               # ImageNet-V2: label numbers are ImageNet's
                held = sorted(set(v.labels.tolist()))
                if held and held[-1] >= len(main.classes) or any(v.classes[y] != main.classes[y] for y in held):
                    raise DatasetError(f"{v.layout.kind}: its label folders do not name ImageNet's classes in "
                                       f"ImageNet's order (classnames.txt)")
                mapping = torch.arange(len(v.classes))
            d = len(self.domains)
            self.domains.append(v.layout.kind)
            self.domain_classes[d] = sorted(set(mapping.tolist()) & set(range(len(main.classes))))
            paths += v.paths
            labels.append(mapping[v.labels])
            domains.append(torch.full((len(v),), d, dtype=torch.long))
        self.eval_only = list(range(len(main.domains), len(self.domains)))
        self.paths = paths
        self.labels = torch.cat(labels)
        self.domain_ids = torch.cat(domains)

    def base_new_split(self):
        return self.main.base_new_split()

    def official_split(self, source_ids, target_ids, protocol, shots, seed):
        """ImageNet's lists; every variant image is evaluated."""
        train, evaluation, drawn = self.main.official_split(source_ids, target_ids, protocol, shots, seed)
        variants = (self.domain_ids >= len(self.main.domains)).nonzero().flatten()
        return train, torch.cat([evaluation, variants]).sort().values, drawn

    def verify(self, indices: Sequence[int]) -> None:
        verify_images(self.paths, self.folder, indices)

    def load(self, index: int) -> torch.Tensor:
        return read_image(self.paths[index])


__all__ = ["BASE_TO_NEW", "WithVariants", "COOP_DOC", "CoOpDataset", "IMAGENET_VARIANTS", "Item", "LAYOUTS", "Layout",
           "generate_fewshot", "lab2cname", "read_lists", "subsample_halves"]
