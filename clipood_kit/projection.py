"""UMAP of image features under several encoder states, in one frame (fitted on the first state)."""
from __future__ import annotations

from typing import Dict

import torch

from .experiment import Setup
from .scoring import encode


def umap_projection(setup: Setup, states: Dict[str, Dict[str, torch.Tensor]], points: int, seed: int) -> dict:
    """Image features of `points` evaluation images under each encoder state, projected by one UMAP fitted on
    the first state's features (the zero-shot model) and applied to the others; class text features too."""
    import umap
    gen = torch.Generator().manual_seed(seed)
    pick = setup.eval_idx[torch.randperm(len(setup.eval_idx), generator=gen)[:points]].sort().values
    feats = {name: encode(setup, state, pick)["features"].numpy() for name, state in states.items()}
    names = list(states)
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed, n_jobs=1)
    coords = {names[0]: reducer.fit_transform(feats[names[0]])}
    coords.update({n: reducer.transform(feats[n]) for n in names[1:]})
    anchor = reducer.transform(setup.text_features.numpy())
    return {"coords": coords, "anchors": {n: anchor for n in names},
            "labels": setup.dataset.labels[pick].numpy(), "domains": setup.dataset.domain_ids[pick].numpy()}
