"""Independent transcriptions of the official selection rules, for the reader tests (not used by the kit).

Each function follows the official code's structure step by step, with its file and lines, so a reader test
compares the kit's selection with what the official code would select:
- `dassl_read_split`: CoOp `datasets/oxford_pets.py` `read_split`, lines 122-138;
- `dassl_fewshot`: Dassl `dassl/data/datasets/base_dataset.py` `generate_fewshot_dataset` lines 167-209 and
  `split_dataset_by_label` lines 211-223, on the global `random` seeded by `set_random_seed`
  (`dassl/utils/tools.py`);
- `coop_subsample`: CoOp `datasets/oxford_pets.py` `subsample_classes`, lines 140-186;
- `domainbed_split`: DomainBed `domainbed/lib/misc.py` `seed_hash` lines 132-137 and `split_dataset` lines
  167-178, as CLIPood `converter_domainbed.py` lines 44-54 calls them.
"""
import hashlib
import math
import os
import random
from collections import defaultdict

import numpy as np


class Datum:
    def __init__(self, impath, label, classname):
        self.impath, self.label, self.classname = impath, label, classname


def dassl_read_split(split, path_prefix):
    def convert(items):
        return [Datum(os.path.join(path_prefix, impath), int(label), classname) for impath, label, classname in items]
    return convert(split["train"]), convert(split["val"]), convert(split["test"])


def dassl_fewshot(seed, train, val, num_shots, with_val=True):
    random.seed(seed)                               # set_random_seed(cfg.SEED)

    def generate(data_source, k):
        tracker = defaultdict(list)
        for item in data_source:
            tracker[item.label].append(item)
        dataset = []
        for label, items in tracker.items():
            if len(items) >= k:
                sampled = random.sample(items, k)
            else:
                sampled = items
            dataset.extend(sampled)
        return dataset
    train = generate(train, num_shots)
    val = generate(val, min(num_shots, 4)) if with_val else val
    return train, val


def coop_subsample(subsample, *datasets):
    labels = sorted({item.label for item in datasets[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: y_new for y_new, y in enumerate(selected)}
    return [[Datum(i.impath, relabel[i.label], i.classname) for i in d if i.label in selected] for d in datasets]


def seed_hash(*args):
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def domainbed_split(n_items, fraction, env_i, trial_seed=0):
    """(out keys, in keys) of one environment."""
    keys = list(range(n_items))
    np.random.RandomState(seed_hash(trial_seed, env_i)).shuffle(keys)
    n = int(n_items * fraction)
    return keys[:n], keys[n:]
