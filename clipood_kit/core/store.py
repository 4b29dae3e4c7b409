"""A keyed on-disk store of computed results (JSON): the sweeps' points and the lessons' trained runs.

`cached(kind, payload, compute)` returns the value stored under the payload's key, or computes, stores and
returns it. The key is a digest of the payload (every setting the value depends on: the experiment, the method,
the weights and data identity); the file also holds the payload itself, which must read back equal, so a key
collision or a stale entry is recomputed, never served. Tensors and arrays in the value are kept exactly
(float64 round trips bit for bit through JSON's repr of floats; tensors keep their dtype).

Where the store lives: `$CLIPOOD_KIT_CACHE`, else `~/.cache/clipood-kit`. A class-room hub points every student
at one prepared store (`clipood-kit lessons prepare --cache DIR`); it may be read-only: a value that cannot be
written is still returned (and a warning says once that the store is read-only).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clipood_kit.core.io import write_json

STORE_VERSION = 1            # bump when a change alters what a stored value holds
_warned_read_only = set()


def cache_root() -> Path:
    """$CLIPOOD_KIT_CACHE, else ~/.cache/clipood-kit."""
    return Path(os.environ.get("CLIPOOD_KIT_CACHE") or Path.home() / ".cache" / "clipood-kit")


def store_dir() -> Path:
    return cache_root() / "results"


def canonical(payload: Any) -> Any:
    """The payload as it reads back from a JSON file (tuples become lists, keys strings, objects their str)."""
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def key_of(payload: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(payload), sort_keys=True).encode()).hexdigest()[:20]


def encode(value: Any) -> Any:
    """JSON-able form of nested dicts/lists of numbers, strings, numpy arrays and tensors."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).replace("torch.", ""),
                "shape": list(value.shape)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"])).reshape(value["shape"])
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _entry(kind: str, payload: Any, root: Path | None) -> tuple:
    """(the payload as stored, with the store's version and the kind; the entry's path)."""
    full = {"version": STORE_VERSION, "kind": kind, "payload": canonical(payload)}
    return full, Path(root or store_dir()) / f"{kind}-{key_of(full)}.json"


def lookup(kind: str, payload: Any, root: Path | None = None) -> tuple:
    """(found, value) for the entry of `payload`; a damaged or mismatching entry counts as not found."""
    full, path = _entry(kind, payload, root)
    if path.is_file():
        try:
            entry = json.loads(path.read_text())
            if entry.get("payload") == full:
                return True, decode(entry["value"])
        except (ValueError, KeyError, TypeError):
            pass                                   # damaged: recomputed by the caller
    return False, None


def cached(kind: str, payload: Any, compute: Callable[[], Any], root: Path | None = None) -> Any:
    """The stored value of `kind` for `payload`, else `compute()` (stored atomically, then returned)."""
    found, value = lookup(kind, payload, root)
    if found:
        return value
    value = compute()
    full, path = _entry(kind, payload, root)
    try:
        write_json(path, {"payload": full, "value": encode(value)})
    except OSError as e:
        if str(path.parent) not in _warned_read_only:
            _warned_read_only.add(str(path.parent))
            warnings.warn(f"results are not stored: {path.parent} is not writable ({e.strerror}); "
                          f"they are computed for this session only")
    return value
