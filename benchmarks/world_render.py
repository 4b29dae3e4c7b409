"""Images per second of the embedded world's renderer (target: at least 3,000 on 2 cores).

    python benchmarks/world_render.py [--n 20000]
"""
import argparse
import json
import time

import torch

from clipood_kit.data import world


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    world.sample(256, seed=0)
    rates = []
    for r in range(args.repeats):
        t = time.perf_counter()
        world.sample(args.n, seed=r + 1)
        rates.append(args.n / (time.perf_counter() - t))
    print(json.dumps({"benchmark": "world_render", "images": args.n, "threads": torch.get_num_threads(),
                      "images_per_s_median": round(sorted(rates)[len(rates) // 2]), "images_per_s_all": [round(x) for x in rates]}))


if __name__ == "__main__":
    main()
