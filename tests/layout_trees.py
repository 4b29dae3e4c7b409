"""Small trees in the official on-disk layouts (tiny JPEGs, split files, class-name files, variant files, a
few-shot pickle), for the reader tests. Every tree is written as the official instructions leave it on disk."""
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

from clipood_kit.data.coop_layout import LAYOUTS


def jpeg(path: Path, seed: int) -> str:
    """A distinct 8 x 8 JPEG (its pixels from the seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return str(path)


def split_tree(data: Path, kind: str, classes=("golden_retriever", "tabby_cat", "sea_lion", "red_fox", "tree_frog"),
               per_class=(6, 2, 4)):
    """A split-file dataset under `data`: images below its image folder, `split_zhou_<Name>.json` with
    [relative path, label, class name] entries; `per_class`: train, val and test images per class."""
    layout = LAYOUTS[kind]
    folder = data / layout.folder
    images = folder / layout.image_dir if layout.image_dir else folder
    split, n = {"train": [], "val": [], "test": []}, 0
    for part, count in zip(("train", "val", "test"), per_class):
        for label, name in enumerate(classes):
            for k in range(count):
                rel = f"{name}/{part}_{k}.jpg"
                jpeg(images / rel, n)
                n += 1
                split[part].append([rel, label, name])
    (folder / layout.split_file).write_text(json.dumps(split))
    return folder, split


def fgvc_tree(data: Path, variants=("707-320", "727-200", "A300B4", "BAE 146-200"), per_variant=(3, 2, 2)):
    folder = data / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    n = 0
    for part, count in zip(("train", "val", "test"), per_variant):
        lines = []
        for v in variants:
            for _ in range(count):
                image_id = f"{1000000 + n}"
                jpeg(folder / "images" / f"{image_id}.jpg", n)
                lines.append(f"{image_id} {v}\n")
                n += 1
        (folder / f"images_variant_{part}.txt").write_text("".join(lines))
    return folder


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"]


def classnames_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)))


def imagenet_tree(data: Path, train=5, val=2):
    folder = data / "imagenet"
    n = 0
    for part, count in (("train", train), ("val", val)):
        for w in WNIDS:
            for k in range(count):
                jpeg(folder / "images" / part / w / f"{w}_{k}.JPEG", 500 + n)
                n += 1
    classnames_file(folder / "classnames.txt")
    return folder


def variant_tree(data: Path, kind: str, wnids=WNIDS[1:4], per_class=2):
    """ImageNet-Sketch, -A or -R: a folder per WordNet id (a subset for -A and -R), ImageNet's classnames.txt."""
    layout = LAYOUTS[kind]
    folder = data / layout.folder
    for i, w in enumerate(wnids):
        for k in range(per_class):
            jpeg(folder / layout.image_dir / w / f"{k}.jpg", 900 + 10 * i + k)
    (folder / layout.image_dir / "README.txt").write_text("ImageNet-R readme\n") if "README.txt" in layout.ignored \
        else None
    classnames_file(folder / "classnames.txt")
    return folder


def imagenetv2_tree(data: Path, labels=(0, 3), per_class=2):
    """ImageNet-V2: folders 0..999 (images in a few), ImageNet's classnames.txt (here 6 names: labels < 6)."""
    folder = data / "imagenetv2"
    base = folder / "imagenetv2-matched-frequency-format-val"
    for y in range(1000):
        (base / str(y)).mkdir(parents=True, exist_ok=True)
    for y in labels:
        for k in range(per_class):
            jpeg(base / str(y) / f"{k}.jpeg", 1200 + 10 * y + k)
    return folder


def domainbed_tree(data: Path, folder="PACS", envs=("art_painting", "cartoon", "photo", "sketch"),
                   classes=("dog", "elephant", "giraffe", "guitar"), per_class=5):
    root = data / folder
    n = 0
    for e in envs:
        for c in classes:
            for k in range(per_class + (n % 3)):
                jpeg(root / e / c / f"pic_{k:03d}.jpg", 2000 + n)
                n += 1
    return root


def fewshot_pickle(path: Path, parts: dict) -> None:
    """A `split_fewshot/shot_K-seed_S.pkl` as Dassl writes it: {'train': [Datum], 'val': [Datum]}, pickled with
    Dassl's own class path (a stand-in module `dassl.data.datasets.base_dataset` while pickling)."""
    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname
    Datum.__module__ = module.__name__
    Datum.__qualname__ = "Datum"
    module.Datum = Datum
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names[:-1]:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]] = module
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump({k: [Datum(*d) for d in v] for k, v in parts.items()}, f, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
