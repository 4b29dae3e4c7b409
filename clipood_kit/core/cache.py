"""A disk cache for what every method and seed of an experiment recomputes: the zero-shot model's image
features and the class text classifiers.

An entry is a safetensors file named by the SHA-256 of its key, and the key is stored in the file's metadata
and checked on read. The key holds everything the tensors depend on: the architecture and weights (model_id:
a digest of a weights file, or the pretrained tag), the dataset's identity (the world's config, or a folder's
file list with sizes and modification times), the image indices (the split), the eval transform, and for text
the class names and templates. Change any of them and the key changes (a miss). Writes are atomic (a temporary
file renamed into place), so two processes writing the same entry at once leave one whole file; a damaged
entry is rebuilt with a warning. `cache_dir` "off" disables the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from clipood_kit.core.io import load_weights, save_weights

Tensors = Dict[str, torch.Tensor]


def default_dir() -> Path:
    """$CLIPOOD_KIT_CACHE/features, else ~/.cache/clipood-kit/features."""
    from clipood_kit.core.store import cache_root
    return cache_root() / "features"


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, root: Optional[str | os.PathLike] = None):
        self.enabled = str(root) != "off"
        self.root = Path(root) if root not in (None, "off") else default_dir()
        self.hits = self.misses = 0

    def path(self, kind: str, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        return self.root / f"{kind}-{digest}.safetensors"

    def get(self, kind: str, key: dict, compute: Callable[[], Tensors]) -> Tensors:
        """The cached tensors for `key`, or `compute()`'s, stored for next time."""
        if not self.enabled:
            return compute()
        path = self.path(kind, key)
        canonical = json.dumps(key, sort_keys=True, default=str)
        if path.is_file():
            try:
                from safetensors import safe_open
                with safe_open(str(path), "pt") as f:
                    stored = (f.metadata() or {}).get("key")
                if stored != canonical:
                    raise ValueError("its key differs from the file name's")
                self.hits += 1
                return load_weights(path)
            except Exception as e:      # noqa: BLE001 - any unreadable entry is rebuilt
                warnings.warn(f"feature cache entry {path} is damaged ({type(e).__name__}: {e}); rebuilding it",
                              stacklevel=2)
        self.misses += 1
        tensors = compute()
        save_weights(path, tensors, metadata={"key": canonical})
        return tensors
