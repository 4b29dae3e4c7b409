"""`--data KIND:ROOT`: which reader reads a folder, chosen by name or detected, and `clipood-kit data check`.

Kinds:
- CoOp's eleven base-to-new datasets and ImageNet's four variants (`coop_layout.LAYOUTS`: imagenet, caltech101,
  oxfordpets, stanfordcars, oxfordflowers, food101, fgvcaircraft, sun397, dtd, eurosat, ucf101; imagenetv2,
  imagenet-sketch, imagenet-a, imagenet-r);
- DomainBed's five (`domainbed_layout.DOMAINBED`: pacs, vlcs, officehome, terraincognita, domainnet);
- MCM's ImageNet subsets (`mcm_layout.SUBSETS`: imagenet10, imagenet20, imagenet100);
- `folder`: any DomainBed-style tree `root/<domain>/<class>/<image>` (`datasets.FolderDataset`).

A ROOT without a kind is detected (`detect`): a CoOp split file or a dataset folder name (under ROOT or ROOT
itself), a DomainBed folder name, else the generic folder tree; the choice is printed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from clipood_kit.data import coop_layout, domainbed_layout, mcm_layout
from clipood_kit.data.datasets import DatasetError, DomainDataset, FolderDataset

FOLDER = "folder"
KINDS: Tuple[str, ...] = (*coop_layout.LAYOUTS, *domainbed_layout.DOMAINBED, *mcm_layout.SUBSETS, FOLDER)


def parse_data(value: str) -> Tuple[Optional[str], str]:
    """'KIND:ROOT' -> (kind, root); a plain path -> (None, path). A prefix that is not a kind is part of the path."""
    kind, sep, rest = value.partition(":")
    if sep and kind.lower() in KINDS:
        return kind.lower(), rest
    return None, value


def detect(root: str | os.PathLike) -> Tuple[str, str]:
    """(kind, why) of a folder: the CoOp split file or dataset folder it holds or is, a DomainBed folder, an MCM
    subset, else the generic folder tree."""
    root = Path(root)
    for layout in coop_layout.LAYOUTS.values():
        for place in (root, root / layout.folder):
            if layout.split_file and (place / layout.split_file).is_file():
                return layout.kind, f"found {place / layout.split_file}"
    for layout in coop_layout.LAYOUTS.values():
        if root.name == layout.folder and (root / (layout.image_dir or ".")).is_dir():
            return layout.kind, f"the folder is named {layout.folder}/ (CoOp's name)"
    for kind, (_, folder) in domainbed_layout.DOMAINBED.items():
        if root.name == folder:
            return kind, f"the folder is named {folder}/ (DomainBed's name)"
    for kind, (folder, _) in mcm_layout.SUBSETS.items():
        if root.name == folder:
            return kind, f"the folder is named {folder}/ (MCM's name)"
    return FOLDER, "no CoOp, DomainBed or MCM layout: read as root/<domain>/<class>/<image>"


def open_layout(value: str, announce: bool = True) -> DomainDataset:
    """The dataset of a `--data` value that is not the world: 'KIND:ROOT' or a folder (detected)."""
    kind, root = parse_data(value)
    if kind is not None and not root:
        raise DatasetError(f"--data {value} names the dataset but not its folder: pass --data {kind}:ROOT, or "
                           f"--data ROOT with a preset that names {kind}")
    if kind is None:
        if not Path(root).is_dir():
            return FolderDataset(Path(root))          # its own error names the missing folder
        kind, why = detect(root)
        if announce and kind != FOLDER:
            print(f"--data {root}: read as {kind} ({why}); pass --data {kind}:{root} to choose it yourself")
    if kind in coop_layout.LAYOUTS:
        return coop_layout.CoOpDataset(root, kind)
    if kind in domainbed_layout.DOMAINBED:
        return domainbed_layout.DomainBedDataset(root, kind)
    if kind in mcm_layout.SUBSETS:
        return mcm_layout.ImageNetSubset(root, kind)
    return FolderDataset(Path(root))


# ----------------------------------------------------------------------------------------------------
# clipood-kit data check
# ----------------------------------------------------------------------------------------------------
def check(value: str, verify: bool = True, presets: Sequence[str] = ()) -> Dict:
    """What a `--data` value holds, and every problem at once: {kind, why, problems, ...} (no exception for a
    broken tree: the problems list says what is wrong). `verify`: decode every image (slow on large sets);
    `presets`: the preset names to report on (those that name this dataset: ready, or not)."""
    kind, root = parse_data(value)
    why = "given"
    if kind is None:
        if not Path(root).is_dir():
            return {"data": value, "kind": None, "problems": [f"{root} is not a folder"]}
        kind, why = detect(root)
    report: Dict = {"data": value, "root": str(root), "kind": kind, "why": why, "problems": []}
    problems: List[str] = report["problems"]
    if kind in coop_layout.LAYOUTS:
        problems += coop_problems(root, coop_layout.LAYOUTS[kind])
    try:
        dataset = open_layout(f"{kind}:{root}" if kind != FOLDER else root, announce=False)
    except DatasetError as e:
        problems.append(str(e))
        return report
    report.update(classes=len(dataset.classes), class_names=list(dataset.classes[:10]), domains=list(dataset.domains),
                  images=len(dataset), template=getattr(dataset, "template", None))
    partition = getattr(dataset, "partition", None)
    if isinstance(partition, dict):
        report["splits"] = {k: len(v) for k, v in partition.items()}
    report["per_domain"] = {d: int((dataset.domain_ids == i).sum()) for i, d in enumerate(dataset.domains)}
    paths = getattr(dataset, "paths", [])
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        problems.append(f"{len(missing)} listed image(s) missing, e.g. {missing[:3]}")
    if verify and paths:
        present = [i for i, p in enumerate(paths) if Path(p).is_file()]
        try:
            dataset.verify(present)
        except DatasetError as e:
            problems.append(str(e))
    report["presets"] = {name: "ready" if not problems else "needs the problems above fixed"
                         for name in presets if name.endswith(f"-{kind.replace('-', '')}")}
    return report


def coop_problems(root: str, layout: coop_layout.Layout) -> List[str]:
    """Every missing piece of a CoOp layout, named with the document that explains it."""
    try:
        folder = coop_layout.dataset_folder(root, layout)
    except DatasetError as e:
        return [str(e)]
    needed = []
    if layout.image_dir:
        needed.append(folder / layout.image_dir)
    if layout.split_file:
        needed.append(folder / layout.split_file)
    if layout.reader == "fgvc":
        needed += [folder / "variants.txt"] + [folder / f"images_variant_{p}.txt" for p in ("train", "val", "test")]
    if layout.reader in ("imagenet-folders",):
        needed.append(folder / "classnames.txt")
    return [f"{layout.kind}: missing {p} ({coop_layout.COOP_DOC}, section {layout.name})" for p in needed
            if not p.exists()]


def format_check(report: Dict) -> str:
    """The `data check` report as text."""
    lines = [f"data      {report['data']}", f"layout    {report['kind']} ({report.get('why', '')})"]
    if "images" in report:
        lines += [f"classes   {report['classes']} ({', '.join(report['class_names'])}"
                  f"{', ...' if report['classes'] > len(report['class_names']) else ''})",
                  f"domains   {', '.join(f'{d} ({n} images)' for d, n in report['per_domain'].items())}",
                  f"images    {report['images']}"]
        if "splits" in report:
            lines.append("splits    " + ", ".join(f"{k} {n}" for k, n in report["splits"].items()))
        lines.append(f"template  {report['template'] or 'the model default'}")
    for name, state in report.get("presets", {}).items():
        lines.append(f"preset    {name}: {state}")
    lines.append("problems  " + ("none" if not report["problems"] else f"{len(report['problems'])}"))
    lines += [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines)


__all__ = ["FOLDER", "KINDS", "check", "detect", "format_check", "open_layout", "parse_data"]
