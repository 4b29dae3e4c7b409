"""Image features of a model state on an experiment's images: sharded over processes, the zero-shot model's
features read from the feature cache."""
from __future__ import annotations

from typing import Dict, Optional, Protocol

import torch

from clipood_kit.core.cache import FeatureCache, tensor_digest
from clipood_kit.data import DomainDataset, TransformedSubset
from clipood_kit.data.splits import Split
from clipood_kit.evaluation import features as evaluation
from clipood_kit.models.adapted import AdaptedCLIP
from clipood_kit.models.loader import ZeroShot


class EncodingSetup(Protocol):
    """What encoding reads from an experiment's setup (`experiment.Setup` provides it): the images and their
    split, the model and its states, the zero-shot classifier, the cache and the evaluation settings."""

    cfg: object                                 # its `eval_batch_size`
    dataset: DomainDataset
    split: Split                                # the evaluation images, the base classes
    ood_sets: Dict[str, DomainDataset]
    zero_shot: ZeroShot                         # CLIP, its frozen classifier, its image state
    inputs: Dict[str, str]                      # the identity of the model and the data (cache keys)
    cache: Optional[FeatureCache]

    @property
    def device(self) -> torch.device: ...

    @property
    def eval_precision(self) -> Optional[str]: ...

    def scratch_for(self, state: Dict[str, torch.Tensor]) -> AdaptedCLIP: ...


def encode(setup: EncodingSetup, state: Dict[str, torch.Tensor], indices: Optional[torch.Tensor] = None,
           progress: bool = False) -> Dict[str, torch.Tensor]:
    """Image features of the evaluation images (or the given dataset indices) under a model state
    (`experiment.Setup.scratch_for`: the setup's CLIP is never touched), with labels and domains. ViT towers also
    give 'local_mcm' (GL-MCM's local part against the base classes of the state's classifier).

    Under k processes (`accelerate launch`) each process encodes every k-th image and the shards are gathered,
    in order, on every process: the result equals one process's (tests/test_training.py). The zero-shot
    state's features come from the setup's feature cache (`cache.FeatureCache`) when they were computed before."""
    subset = setup.split.eval_idx if indices is None else indices
    if state is setup.zero_shot.state and setup.cache is not None:
        key = {"model": setup.inputs["model"], "data": setup.dataset.describe(), "data_files": setup.inputs["data"],
               "indices": tensor_digest(subset), "n": len(subset), "transform": repr(setup.zero_shot.loaded.preprocess),
               "precision": setup.eval_precision}
        return setup.cache.get("zero-shot-images", key, lambda: _encode(setup, state, subset, progress))
    return _encode(setup, state, subset, progress)


def encode_ood_set(setup: EncodingSetup, state: Dict[str, torch.Tensor], name: str, progress: bool = False) -> Dict[str, torch.Tensor]:
    """Image features of one of the setup's OOD sets (`Setup.ood_sets`: the world's far-OOD sets, --ood-data
    folders) under a model state, as `encode` gives them for the dataset's images (sharded, cached at zero-shot)."""
    data = setup.ood_sets[name]
    indices = torch.arange(len(data))
    if state is setup.zero_shot.state and setup.cache is not None:
        key = {"model": setup.inputs["model"], "ood_set": data.fingerprint(), "transform": repr(setup.zero_shot.loaded.preprocess),
               "precision": setup.eval_precision}
        return setup.cache.get("zero-shot-ood-set", key, lambda: _encode(setup, state, indices, progress, data))
    return _encode(setup, state, indices, progress, data)


def classifier_of(setup: EncodingSetup, model: AdaptedCLIP) -> torch.Tensor:
    """C x D normalised class features of a scratch model: the setup's frozen ones when nothing acts on them."""
    if model.classifier_is_frozen:
        return setup.zero_shot.text_features
    with torch.no_grad():
        return torch.nn.functional.normalize(model.class_features().float(), dim=-1).cpu()


def state_classifier(setup: EncodingSetup, state: Dict[str, torch.Tensor]) -> torch.Tensor:
    """C x D class features under a model state: computed from the state when it holds a text tower or parts'
    modules, else the setup's frozen zero-shot classifier (computed once)."""
    if not any(k.startswith(("text.", "parts.")) for k in state):
        return setup.zero_shot.text_features
    return classifier_of(setup, setup.scratch_for(state))


def state_cosines(setup: EncodingSetup, state: Dict[str, torch.Tensor], features: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """N x C class scores in cosine units of normalised image features under a model state: cos(f, t_c) to the
    state's classifier (`state_classifier`), or, when a part of the state adapts the scores (Tip-Adapter's cache,
    CoCoOp's image-conditioned prompts; `AdaptedCLIP.cosines`), the model's own scores, in batches."""
    model = setup.scratch_for(state) if any(k.startswith("parts.") for k in state) else None
    if model is None or not model.adapts_cosines:
        return features @ state_classifier(setup, state).T
    dtype = next(model.visual.parameters()).dtype
    with torch.no_grad():
        t = model.class_features()
        return torch.cat([model.cosines(f.to(setup.device, dtype), t).float().cpu()
                          for f in features.split(batch_size)]) if len(features) else features.new_zeros(0, len(t))


def _encode(setup: EncodingSetup, state: Dict[str, torch.Tensor], subset: torch.Tensor, progress: bool,
            dataset=None) -> Dict[str, torch.Tensor]:
    from accelerate import PartialState
    from accelerate.utils import gather_object
    model = setup.scratch_for(state)
    local = classifier_of(setup, model)[setup.split.base_ids] if evaluation.has_local_features(model.visual) else None
    adapt = model.adapt_image if model.adapts_images else None
    dist = PartialState()
    world, rank = dist.num_processes, dist.process_index
    shard = subset[rank::world] if world > 1 else subset
    dataset = setup.dataset if dataset is None else dataset
    out = evaluation.encode_images(model.visual, TransformedSubset(dataset, shard, setup.zero_shot.loaded.preprocess),
                                   setup.cfg.eval_batch_size, setup.device, progress=progress and rank == 0,
                                   local_classifier=local, adapt=adapt, precision=setup.eval_precision
                                   ) if len(shard) else None
    if world == 1:
        return out
    parts = gather_object([out])                      # one entry per process, in rank order
    merged = {}
    for key, first in next(p for p in parts if p is not None).items():
        full = torch.empty((len(subset), *first.shape[1:]), dtype=first.dtype)
        for r, p in enumerate(parts):
            if p is not None:
                full[r::world] = p[key]
        merged[key] = full
    return merged
