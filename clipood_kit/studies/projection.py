"""UMAP of image features under several encoder states, in one frame (fitted on the first state)."""
from __future__ import annotations

from typing import Dict

import torch

from clipood_kit.engine.experiment import Setup
from clipood_kit.engine.encoding import encode


def mean_displacement(reference: torch.Tensor, moved: torch.Tensor) -> float:
    """Mean over images of 1 - cos(f_reference, f_moved): how far a model moved the same images' features."""
    return float((1 - torch.nn.functional.cosine_similarity(reference.double(), moved.double(), dim=-1)).mean())


def fit_umap(reducer, data):
    """`reducer.fit_transform(data)`, with torch's thread count left as it was. UMAP sets numba's threads to its
    n_jobs and afterwards back to numba's own count, NUMBA_NUM_THREADS, every core (umap-learn 0.5 `umap_.py`,
    `fit`: `numba.set_num_threads(self.n_jobs)` ... `numba.set_num_threads(self._original_n_threads)`); under
    numba's OpenMP threading layer that sets the process's OpenMP threads, which torch reads too. A fan-out job
    or a test worker held to one thread then ran every later torch op on every core (seen: a test worker's next
    test, 10 s of CPU alone, took 170 s of CPU beside other processes)."""
    threads = torch.get_num_threads()
    try:
        return reducer.fit_transform(data)
    finally:
        torch.set_num_threads(threads)


def umap_projection(setup: Setup, states: Dict[str, Dict[str, torch.Tensor]], points: int, seed: int) -> dict:
    """The same `points` evaluation images (as many from every domain, seeded) under each encoder state, as the
    classifier reads them (their cosines to the class text features), projected by one UMAP fitted on every
    state's images together: a shared frame in which a model's change moves its points (a frame fitted on the
    zero-shot features alone maps the others near the zero-shot neighbours it knows, hiding the movement).
    Class text features are not drawn: read the same way they sit apart from every image (the modality gap)."""
    import numpy as np
    import umap
    gen = torch.Generator().manual_seed(seed)
    domains = setup.dataset.domain_ids[setup.split.eval_idx]
    per_domain = max(1, points // max(1, len(domains.unique())))
    pick = []
    for d in domains.unique().tolist():
        pool = setup.split.eval_idx[domains == d]
        pick.append(pool[torch.randperm(len(pool), generator=gen)[:per_domain]])
    pick = torch.cat(pick).sort().values
    names = list(states)
    text = setup.zero_shot.text_features
    # what the classifier reads: each image's cosines to the class text features (C numbers, not the D-dim
    # feature, whose other directions (the shape's colour and size) dominate a UMAP of raw features)
    features = [encode(setup, states[n], pick)["features"] for n in names]
    evidence = [(f @ text.T).numpy() for f in features]
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="euclidean", random_state=seed, n_jobs=1)
    joint = fit_umap(reducer, np.concatenate(evidence))
    n = len(pick)
    coords = {name: joint[i * n:(i + 1) * n] for i, name in enumerate(names)}
    labels, domains = setup.dataset.labels[pick].numpy(), setup.dataset.domain_ids[pick].numpy()
    unseen = np.isin(domains, setup.split.target_ids)
    # how far each model moved the images' features from the first model's (in the features, not in UMAP's
    # layout, whose distances are not to be read): mean 1 - cos(f_model, f_first), per group of domains and per
    # class; and the scale to judge it by: how far apart two images of one class, and of two classes, are
    moved, per_class = {}, {}
    classes = np.unique(labels)
    for i, name in enumerate(names[1:], start=1):
        if unseen.any() and (~unseen).any():
            moved[name] = {"unseen domains": mean_displacement(features[0][unseen], features[i][unseen]),
                           "training domains": mean_displacement(features[0][~unseen], features[i][~unseen])}
        per_class[name] = [mean_displacement(features[0][labels == c], features[i][labels == c]) for c in classes]
    return {"coords": coords, "moved": moved, "labels": labels, "domains": domains, "classes": classes,
            "per_class": per_class, "scale": pair_distances(features[0], torch.as_tensor(labels))}


def pair_distances(features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean 1 - cos between two different images of the same class, and of different classes: the yardstick
    for a displacement (a model that moves features by much less than the same-class spread keeps the layout)."""
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    dist = 1 - f @ f.T
    same = labels[:, None] == labels[None]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    return {"same class": float(dist[same & off].mean()), "different classes": float(dist[~same].mean())}
