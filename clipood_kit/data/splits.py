"""Deterministic splits over per-sample labels and domain ids (index lists into a DomainDataset).

- `domain_split`: source vs target domains (leave-one-domain-out when one target).
- `holdout_split`: a held-out fraction of every domain (DomainBed's in-domain validation split), seeded.
- `base_new_classes`: the sorted class list cut in halves, base = first ceil(C/2) (CoOp / CLIPood convention).
- `k_shot`: k images per class, seeded.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch


def _check_ids(name: str, ids: Sequence[int], total: int) -> List[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < total]
    if bad:
        raise ValueError(f"{name} {bad} out of range: there are {total} (ids 0..{total - 1})")
    return ids


def domain_split(domain_ids: torch.Tensor, target_domains: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(source indices, target indices): samples whose domain is not / is in `target_domains`."""
    total = int(domain_ids.max()) + 1 if len(domain_ids) else 0
    targets = _check_ids("target domain id(s)", target_domains, total)
    if not targets:
        raise ValueError("target_domains is empty: name at least one held-out domain")
    if len(set(targets)) == total:
        raise ValueError("every domain is a target: keep at least one source domain to train on")
    is_target = torch.isin(domain_ids, torch.tensor(targets))
    return (~is_target).nonzero().squeeze(1), is_target.nonzero().squeeze(1)


def holdout_split(domain_ids: torch.Tensor, fraction: float, seed: int,
                  indices: torch.Tensor | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out): in every domain, a seeded random `fraction` of `indices` (default: all) is held out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    indices = torch.arange(len(domain_ids)) if indices is None else torch.as_tensor(indices)
    gen = torch.Generator().manual_seed(int(seed))
    kept, held = [], []
    for d in domain_ids[indices].unique(sorted=True).tolist():
        members = indices[domain_ids[indices] == d]
        perm = members[torch.randperm(len(members), generator=gen)]
        n_held = int(round(fraction * len(members)))
        held.append(perm[:n_held])
        kept.append(perm[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def base_new_classes(num_classes: int) -> Tuple[List[int], List[int]]:
    """(base class ids, new class ids): the first ceil(C/2) sorted classes are base, the rest new."""
    if num_classes < 2:
        raise ValueError(f"base/new needs at least 2 classes, got {num_classes}")
    cut = math.ceil(num_classes / 2)
    return list(range(cut)), list(range(cut, num_classes))


def select_classes(labels: torch.Tensor, classes: Sequence[int], indices: torch.Tensor | None = None) -> torch.Tensor:
    """The entries of `indices` (default: all) whose label is in `classes`."""
    indices = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices)
    return indices[torch.isin(labels[indices], torch.as_tensor(list(classes), dtype=torch.long))]


def k_shot(labels: torch.Tensor, k: int, seed: int, indices: torch.Tensor | None = None) -> torch.Tensor:
    """k seeded random samples of every class among `indices` (default: all), sorted.

    A class with fewer than k samples contributes all of them, with a warning naming it.
    """
    if k < 1:
        raise ValueError(f"k (shots per class) must be >= 1, got {k}")
    indices = torch.arange(len(labels)) if indices is None else torch.as_tensor(indices)
    gen = torch.Generator().manual_seed(int(seed))
    picked, short = [], []
    for c in labels[indices].unique(sorted=True).tolist():
        members = indices[labels[indices] == c]
        if len(members) < k:
            short.append(c)
        picked.append(members[torch.randperm(len(members), generator=gen)[:k]])
    if short:
        warnings.warn(f"class id(s) {short} have fewer than {k} samples; all of theirs are used")
    return torch.cat(picked).sort().values


@dataclass(frozen=True)
class Split:
    """What a protocol decided about a dataset's images (`engine.experiment.prepare`): which train and which are
    held out for evaluation, and which domains and classes each side has. Indices are dataset positions."""

    train_idx: torch.Tensor              # the training images (source domains x training classes)
    eval_idx: torch.Tensor               # the evaluation images: held-out source images and the target domains
    domain_pools: List[torch.Tensor]     # train_idx positions of each source domain (per-domain batches)
    source_ids: List[int]
    target_ids: List[int]
    base_ids: List[int]
    new_ids: List[int]
    train_class_ids: List[int]           # the classes trained on (the base classes)

    def held_out(self, labels: torch.Tensor, domain_ids: torch.Tensor) -> torch.Tensor:
        """The evaluation images of the source domains and the training classes (in-distribution test images),
        given the dataset's labels and domain ids."""
        inside = (torch.isin(domain_ids[self.eval_idx], torch.tensor(self.source_ids))
                  & torch.isin(labels[self.eval_idx], torch.tensor(self.train_class_ids)))
        return self.eval_idx[inside]
