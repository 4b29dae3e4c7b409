"""How many training images per second one CPU core decodes and augments: a folder of 224-pixel JPEGs (the
world's images upscaled), read by `FolderDataset` and the training transform of a 224-pixel model (random
resized crop, flip, normalise), through the trainer's own loader (`AugmentedView`, seeded per image) with 0, 1
and 2 worker processes. Prints a JSON line with images/s, images/s per worker, and the cores a GPU step needs at
a given training throughput (`--gpu-images-per-s`, an assumption: no GPU was lent to measure it here).

    python benchmarks/loader_throughput.py [--images 1024] [--gpu-images-per-s 2500]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipood_kit.data import FolderDataset, WorldDataset
from clipood_kit.data.transforms import make_transform
from clipood_kit.engine.training import AugmentedView

CFG_224 = {"size": 224, "mean": (0.481, 0.458, 0.408), "std": (0.269, 0.261, 0.276), "interpolation": "bicubic"}


def write_jpegs(root: Path, n: int) -> None:
    """About n images: the same number for every (style, class) cell, so the folder is a valid dataset."""
    world = WorldDataset(per_cell=max(1, round(n / 125)), seed=0)
    for i in range(len(world)):
        d, c = world.domains[int(world.domain_ids[i])], world.classes[int(world.labels[i])]
        (root / d / c).mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(world.images[i].permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC)
        img.save(root / d / c / f"{i:06d}.jpg", quality=90)


def throughput(view, n: int, workers: int, batch: int = 64) -> float:
    batches = [[(i, 1000 + i) for i in range(s, min(n, s + batch))] for s in range(0, n, batch)]
    loader = DataLoader(view, batch_sampler=batches, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(images) for images, _, _ in loader)
    return count / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--gpu-images-per-s", type=float, default=2500.0,
                    help="training throughput to feed (ViT-B/16 bf16 on an H100 is in the thousands; not measured here)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        write_jpegs(root, args.images)
        dataset = FolderDataset(root)
        view = AugmentedView(dataset, make_transform(CFG_224, train=True))
        n = len(dataset)
        throughput(view, min(n, 128), 0)                  # warm-up (file cache, imports)
        rates = {w: throughput(view, n, w) for w in (0, 1, 2)}
    per_core = rates[0]
    print(json.dumps({"benchmark": "loader_throughput", "images": n, "cpu_cores": os.cpu_count(),
                      "images_per_s": {f"{w}_workers": round(r, 1) for w, r in rates.items()},
                      "images_per_s_per_core": round(per_core, 1),
                      "assumed_gpu_images_per_s": args.gpu_images_per_s,
                      "cores_needed": round(args.gpu_images_per_s / per_core, 1)}))


if __name__ == "__main__":
    main()
