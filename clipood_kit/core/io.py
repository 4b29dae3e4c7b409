"""Atomic writes: results, histories and weights appear whole or not at all (write a temp file, then rename)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import torch


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())      # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    return _atomic(path, write)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_weights(path: str | os.PathLike, state_dict: Dict[str, torch.Tensor], metadata: Dict[str, str] | None = None) -> Path:
    """A state dict as safetensors (tensors made contiguous, shared storage cloned), byte-identical for identical
    inputs: safetensors writes the metadata in a random order (a hash map), so the header is rewritten with the
    metadata keys sorted; the header keeps its length, so the tensor data is untouched."""
    from safetensors.torch import save
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    canonical = json.dumps(header, separators=(",", ":")).encode()
    if len(canonical) > size:
        raise RuntimeError("safetensors header grew when its metadata was sorted; please report this")
    data = data[:8] + canonical.ljust(size, b" ") + data[8 + size:]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return _atomic(path, write)


def load_weights(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file with weights_only=True."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def check_writable_folder(folder: str | os.PathLike, option: str = "--out", what: str = "the results") -> Path:
    """Refuse, before any work, a folder that is a file or cannot be written (a real write into its nearest existing
    parent: permission bits do not tell for root or a read-only mount)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {folder} is a file; give a folder for {what}")
    parent = next(p for p in [folder, *folder.parents] if p.exists())
    problem = None if parent.is_dir() else f"{parent} is a file, so it is not writable"
    if problem is None:
        try:
            fd, probe = tempfile.mkstemp(prefix=".clipood-kit-probe-", dir=parent)
            os.close(fd)
            os.remove(probe)
        except OSError:
            problem = f"{parent} is not writable"
    if problem:
        raise PermissionError(f"cannot write {what} into {folder}: {problem}; choose another {option}")
    return folder


def check_results_dir(out: str | os.PathLike, overwrite: bool = False, what: str = "results") -> Path:
    """`check_writable_folder`, and refuse a folder that holds finished results (its results.json) unless
    `overwrite`."""
    out = check_writable_folder(out, "--out", f"the {what}")
    if (out / "results.json").exists() and not overwrite:
        raise FileExistsError(f"{out} holds finished {what} (results.json); pass --overwrite to replace them or "
                              f"choose another --out")
    return out


def write_results(out: str | os.PathLike, results: Any, report: str) -> None:
    """results.json and report.html of a study, bench or sweep: the old results.json goes first and the new one
    last, so a finished folder (results.json present) never holds a report of other results."""
    out = Path(out)
    (out / "results.json").unlink(missing_ok=True)
    write_text(out / "report.html", report)
    write_json(out / "results.json", results)


def check_unique(what: str, values) -> None:
    """Refuse repeated entries (a seed counted twice looks like two runs in a mean ± std)."""
    seen, repeated = set(), []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    if repeated:
        raise ValueError(f"{what} {repeated} given more than once; each counts once: give distinct {what}")


def file_sha256(path: str | os.PathLike) -> str:
    """A file's sha256 (hex), remembered per path, size and modification time (weights digests, OOD overlap)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
