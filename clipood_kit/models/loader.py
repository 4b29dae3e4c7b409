"""One loader for every CLIP: `load_clip(name, pretrained) -> LoadedCLIP(model, tokenizer, preprocess)`.

- `name` is any open_clip architecture (`open_clip.list_models()`), including the embedded
  `tiny-clip-world`, which this module registers with open_clip from `clipood_kit/model_configs/`.
- `pretrained` is an open_clip pretrained tag (downloaded and cached by open_clip itself), a local checkpoint
  file (a state dict in .safetensors, .pt, .pth or .bin, read with `weights_only=True`), `None` for random
  initialisation, or `"default"`: the shipped weights for the tiny model, none for the others.
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch

from clipood_kit.core.io import file_sha256
from clipood_kit.data.transforms import make_transform
from clipood_kit.models.tokenizer import WordTokenizer

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
TINY_NAME = "tiny-clip-world"
# World images are roughly centred on grey; these fix the tiny model's input normalisation.
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.25, 0.25, 0.25)



@functools.lru_cache(maxsize=None)
def _open_clip():
    """open_clip with the embedded architectures registered, imported on first use: open_clip imports torchvision,
    which imports torch._dynamo (1.7 s of CPU in all), and a process that only reads stored results (a lesson opened
    from the class-room store) builds no model."""
    import open_clip
    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def data_dir() -> Path:
    """The project's `data/` folder (shipped weights); `CLIPOOD_KIT_DATA` overrides it."""
    return Path(os.environ.get("CLIPOOD_KIT_DATA") or Path(__file__).resolve().parents[2] / "data")


def tiny_weights_path() -> Path:
    return data_dir() / f"{TINY_NAME}.safetensors"


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights that cannot be obtained (offline, unknown tag); the message says what to pass."""


@dataclass
class LoadedCLIP:
    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable          # eval transform: uint8 tensor or PIL image -> normalised float tensor
    name: str
    pretrained: Optional[str]
    model_id: str                 # architecture + weights identity, for results and cache keys

    def __iter__(self):           # model, tokenizer, preprocess = load_clip(...)
        return iter((self.model, self.tokenizer, self.preprocess))

    def train_transform(self):
        return make_transform(self.model.visual.preprocess_cfg, train=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        """CLIP's exp(t), the inverse temperature of its cosine logits."""
        return self.model.logit_scale.detach().exp().item()

    def tokenize(self, prompts: List[str]) -> torch.Tensor:
        """N x L token ids of the prompts (the model's tokenizer; on the CPU)."""
        return self.tokenizer(list(prompts))

    @torch.no_grad()
    def encode_prompts(self, prompts: List[str]) -> torch.Tensor:
        """N x D raw (unnormalised) text features of the prompts, float32, on the model's device."""
        return self.model.encode_text(self.tokenize(prompts).to(self.device)).float()

    @torch.no_grad()
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token embeddings (N x L x W, float32, CPU) of token ids: what prompt learning initialises its
        context from (CoOp's `clip_model.token_embedding(prompt)`)."""
        if not hasattr(self.model, "token_embedding"):
            raise ValueError(f"{self.name} has no token embedding (an HF text tower): prompt learning needs an "
                             f"open_clip CLIP text transformer")
        return self.model.token_embedding(tokens.to(self.device)).float().cpu()


@dataclass(frozen=True)
class ZeroShot:
    """The zero-shot model an experiment starts from: CLIP (shared, never modified), its classifier of every class,
    the prompt templates behind that classifier, and the image tower's weights as a model state ('visual.*')."""

    loaded: LoadedCLIP
    text_features: torch.Tensor               # every class x D, normalised
    templates: List[str]
    state: Dict[str, torch.Tensor]

    @property
    def logit_scale(self) -> float:
        return self.loaded.logit_scale

    @property
    def device(self) -> torch.device:
        return self.loaded.device


def _short_reason(e: Exception) -> str:
    """One line for a load failure: key mismatches counted (torch lists every key), other errors' first line."""
    text = str(e)
    if "Error(s) in loading state_dict" in text:
        missing = re.search(r"Missing key\(s\) in state_dict: (.*)", text)
        unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*)", text)
        shapes = text.count("size mismatch for")
        parts = []
        for label, m in (("missing", missing), ("unexpected", unexpected)):
            if m:
                keys = re.findall(r'"([^"]+)"', m.group(1))
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:2])})")
        if shapes:
            parts.append(f"{shapes} tensors of another shape")
        return "the file holds another architecture's weights: " + "; ".join(parts)
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _check_reachable(name: str, tag: str, cache_dir: Optional[str], timeout: float = 1.5) -> None:
    """Fail at once (<= `timeout` s) when a pretrained tag's weights are neither cached nor reachable, instead of
    open_clip's retries (about a minute offline). Cached weights (the Hugging Face hub cache, or open_clip's
    folder for URL weights) pass without a network check."""
    import socket
    from urllib.parse import urlparse
    cfg = _open_clip().get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:            # open_clip prefers the hub: 'org/model/' (default file names) or 'org/model/file'
        from huggingface_hub import try_to_load_from_cache
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, f, cache_dir=cache_dir), str) for f in names):
            return
        host = "huggingface.co"
    elif cfg.get("url"):
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if target.is_file():
            return
        host = urlparse(cfg["url"]).hostname
    else:
        return
    if not (hub and os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError:
            pass
    raise PretrainedUnavailableError(
        f"pretrained weights {name}/{tag} are not cached and {host} cannot be reached (offline?): fetch the file "
        f"on a connected machine and pass its path instead, e.g. --pretrained /path/to/open_clip_model.safetensors")


def file_digest(path: Union[str, Path], length: int = 12) -> str:
    """The first `length` hex digits of a file's sha256 (`core.io.file_sha256`, remembered per file version)."""
    return file_sha256(path)[:length]


def tiny_tokenizer() -> WordTokenizer:
    config = json.loads((CONFIG_DIR / f"{TINY_NAME}.json").read_text())
    return WordTokenizer.from_file(CONFIG_DIR / f"{TINY_NAME}.vocab.json", config["text_cfg"]["context_length"])


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """'auto': the accelerator when there is one (CUDA), else the CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but no CUDA device is available; use --device auto or cpu")
    return device


def _shapes(path) -> Dict[str, tuple]:
    """Entry name -> shape of a weights file, read without loading tensors where the format allows."""
    if Path(path).suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = torch.load(path, map_location="meta", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _signature_of_file(shapes: Dict[str, tuple]) -> Optional[tuple]:
    """(embed dim, text width, text layers, vision kind, vision width, vision layers, patch) from entry shapes."""
    if "text_projection" not in shapes or "token_embedding.weight" not in shapes:
        return None
    blocks = lambda prefix: len({m.group(1) for k in shapes for m in [re.match(prefix + r"(\d+)\.", k)] if m})  # noqa: E731
    text = (shapes["text_projection"][1], shapes["token_embedding.weight"][1], blocks(r"transformer\.resblocks\."))
    if "visual.conv1.weight" in shapes and any(k.startswith("visual.transformer.") for k in shapes):
        conv = shapes["visual.conv1.weight"]
        return text + ("vit", conv[0], blocks(r"visual\.transformer\.resblocks\."), conv[2])
    if "visual.layer1.0.conv1.weight" in shapes:
        stages = tuple(blocks(rf"visual\.layer{i}\.") for i in range(1, 5))
        return text + ("resnet", shapes["visual.conv1.weight"][0] * 2, stages, None)
    return None


def _signature_of_config(cfg: dict) -> Optional[tuple]:
    v, tc = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "hf_model_name" in tc or "timm_model_name" in v:
        return None
    text = (cfg.get("embed_dim"), tc.get("width", 512), tc.get("layers", 12))
    layers = v.get("layers")
    if isinstance(layers, (list, tuple)):
        return text + ("resnet", v.get("width", 64), tuple(layers), None)
    return text + ("vit", v.get("width", 768), layers, v.get("patch_size"))


def architectures_like(path) -> List[str]:
    """The open_clip architectures whose shapes match a weights file's (its tower widths, depths, patch size,
    embedding size), for the message of a file loaded as the wrong architecture; [] when it cannot tell."""
    try:
        sig = _signature_of_file(_shapes(path))
    except Exception:               # noqa: BLE001 - an unreadable file: the loader's own message says why
        return []
    if sig is None:
        return []
    oc = _open_clip()
    like = [m for m in oc.list_models() if _signature_of_config(oc.get_model_config(m) or {}) == sig]
    return sorted(like, key=lambda m: (len(m), m))              # the plain name first: ViT-B-32, then variants


TRAINED_STATE_FORMAT = "clipood-kit trained state"
# the metadata a run writes beside a trained state (`engine.runs.trained_state_metadata`)
TRAINED_STATE_FIELDS = ("format", "architecture", "base", "base_digest", "base_id", "method", "model")


def weights_digest(name: str, pretrained: Optional[str]) -> str:
    """What a model's weights are, as a trained state records its base: a file's digest ('sha256:...'), a
    pretrained tag ('tag:NAME'), or 'random-init'. 'default' is resolved first (the tiny model's shipped file)."""
    if pretrained == "default":
        pretrained = str(tiny_weights_path()) if name == TINY_NAME else None
    if pretrained is None:
        return "random-init"
    if Path(pretrained).is_file():
        return f"sha256:{file_digest(pretrained, 16)}"
    return f"tag:{pretrained}"


def trained_state_metadata(path) -> Optional[dict]:
    """The metadata of a run's saved trained state (`engine.runs.write_run`), or None for any other file. A file
    whose metadata has the trained-state fields but another `format` is refused by name (it was edited)."""
    if Path(path).suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:                 # noqa: BLE001 - not a readable safetensors file: load_clip says why
        return None
    if meta.get("format") == TRAINED_STATE_FORMAT:
        return meta
    ours = [k for k in TRAINED_STATE_FIELDS[1:] if k in meta]
    if len(ours) >= 2 or str(meta.get("format", "")).startswith("clipood-kit"):
        raise ValueError(f"{path}: metadata field 'format' is {meta.get('format')!r}, expected "
                         f"{TRAINED_STATE_FORMAT!r} (the file carries a trained state's fields {ours}): it was edited; "
                         f"use the run's own model_*.safetensors or run it again")
    return None


def check_trained_state_metadata(path, meta: dict, name: str) -> None:
    """Every field of a trained state's metadata, each refused by name: present, of the right kind, consistent
    with the architecture asked for, and a base that is neither the file itself nor another trained state."""
    missing = [k for k in TRAINED_STATE_FIELDS if not meta.get(k)]
    if "base_digest" in missing and meta.get("base_id"):
        missing.remove("base_digest")                 # written before base_digest existed: base_id holds it
    if missing:
        raise ValueError(f"{path}: metadata field(s) {missing} missing or empty (a run writes {list(TRAINED_STATE_FIELDS)}): "
                         f"the file was edited; use the run's own model_*.safetensors or run it again")
    arch = meta["architecture"]
    if arch not in _open_clip().list_models():
        raise ValueError(f"{path}: metadata field 'architecture' is {arch!r}, which is no open_clip architecture")
    if arch != name:
        raise ValueError(f"{path} holds a trained state of {arch}, not {name}: pass --model {arch}")
    base = meta["base"]
    if base not in ("none", "default") and Path(base).is_file():
        if Path(base).resolve() == Path(path).resolve():
            raise ValueError(f"{path}: metadata field 'base' names the file itself; it must name the weights the "
                             f"run started from (a tag, a weights file or 'default')")
        if Path(base).suffix == ".safetensors":
            from safetensors import safe_open
            try:
                with safe_open(str(base), "pt") as f:
                    base_meta = f.metadata() or {}
            except Exception:         # noqa: BLE001 - an unreadable base: its own load says why
                base_meta = {}
            if base_meta.get("format") == TRAINED_STATE_FORMAT:
                raise ValueError(f"{path}: metadata field 'base' names {base}, itself a trained state; a trained "
                                 f"state loads onto plain weights only (the run's --pretrained)")


def _recorded_base_digest(meta: dict) -> str:
    """The base digest a trained state recorded ('base_digest'; files written before it: read from 'base_id',
    'ARCH/file:NAME@DIGEST' or 'ARCH/TAG')."""
    if meta.get("base_digest"):
        return meta["base_digest"]
    weights = meta["base_id"].split("/", 1)[-1]
    if weights.startswith("file:") and "@" in weights:
        return f"sha256-prefix:{weights.rsplit('@', 1)[1]}"
    return "random-init" if weights == "random-init" else f"tag:{weights}"


def _digests_match(recorded: str, actual: str) -> bool:
    if recorded.startswith("sha256-prefix:") and actual.startswith("sha256:"):
        prefix = recorded.split(":", 1)[1]
        return actual.split(":", 1)[1][:len(prefix)] == prefix[:16]
    return recorded == actual


def _load_trained_state(name: str, path: str, meta: dict, device, cache_dir) -> "LoadedCLIP":
    """A run's trained state on its base weights: the base model (named in the file's metadata) with the image
    ('visual.*') and text ('text.clip.*') entries of the state loaded over it. The base must be the weights the
    run started from: their digest is compared with the recorded one, so a state never lands on other weights
    (a new `clipood-kit pretrain`, another CLIPOOD_KIT_DATA, an edited `base`)."""
    from safetensors.torch import load_file
    check_trained_state_metadata(path, meta, name)
    base_name = None if meta["base"] == "none" else meta["base"]
    recorded, actual = _recorded_base_digest(meta), weights_digest(name, base_name)
    if not _digests_match(recorded, actual):
        shown = f"default ({tiny_weights_path()})" if base_name == "default" and name == TINY_NAME else base_name
        raise ValueError(f"{path} was trained on base weights {recorded}, but its base {shown} is now {actual}: "
                         f"the base changed (a new `clipood-kit pretrain`, another CLIPOOD_KIT_DATA, an edited "
                         f"metadata field 'base' or 'architecture'); restore the run's base weights or train the run "
                         f"again")
    if actual == "random-init":
        raise ValueError(f"{path} was trained from randomly initialised weights, which cannot be rebuilt; score "
                         f"it with the run's experiment instead (engine.scoring.evaluate_state)")
    state = load_file(path)
    parts = sorted({k.split(".")[1] for k in state if k.startswith("parts.")})
    if parts:
        raise ValueError(f"{path} holds modules of the part(s) {parts} beside CLIP's towers, which a plain CLIP "
                         f"model cannot hold; score it with the run's experiment (engine.scoring.evaluate_state "
                         f"on the loaded state)")
    base = load_clip(name, base_name, device, cache_dir)
    mapped = {(k[len("text.clip."):] if k.startswith("text.clip.") else k): v for k, v in state.items()}
    own = base.model.state_dict()
    missing = [k for k in mapped if k not in own]
    if missing:
        raise ValueError(f"{path} has entries its base model {meta['base']} lacks (e.g. {missing[:3]}): metadata "
                         f"field 'architecture' ({name}) is not the architecture the state was trained as")
    shapes = [k for k in mapped if tuple(mapped[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise ValueError(f"{path}: {len(shapes)} entries have other shapes than {name}'s (e.g. {k}: "
                         f"{tuple(mapped[k].shape)} vs {tuple(own[k].shape)}): metadata field 'architecture' is not "
                         f"the architecture the state was trained as")
    base.model.load_state_dict(mapped, strict=False)
    base.pretrained = path
    base.model_id = f"{name}/file:{Path(path).name}@{file_digest(path)}"
    return base


def load_clip(name: str = TINY_NAME, pretrained: Optional[str] = "default", device: Union[str, torch.device] = "auto",
              cache_dir: Optional[str] = None) -> LoadedCLIP:
    """Build an open_clip model with its weights, tokenizer and eval preprocessing, on `device` ('auto': the
    accelerator when present)."""
    device = resolve_device(device)
    available = _open_clip().list_models()
    if name not in available:
        raise ValueError(f"unknown architecture {name!r}; choose one of open_clip.list_models() "
                         f"(e.g. {TINY_NAME}, ViT-B-32, ViT-B-16, RN50)")
    is_tiny = name == TINY_NAME
    if pretrained == "default":
        pretrained = str(tiny_weights_path()) if is_tiny else None
        if is_tiny and not Path(pretrained).is_file():
            raise PretrainedUnavailableError(
                f"shipped tiny CLIP weights missing at {pretrained}; run `clipood-kit pretrain` to make them "
                f"or set CLIPOOD_KIT_DATA to the folder that holds them")
    kwargs = {"image_mean": TINY_MEAN, "image_std": TINY_STD} if is_tiny else {}
    is_file = pretrained is not None and Path(pretrained).is_file()
    meta = trained_state_metadata(pretrained) if is_file else None
    if meta is not None:
        return _load_trained_state(name, pretrained, meta, device, cache_dir)
    if pretrained is not None and not is_file:
        tags = _open_clip().list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise PretrainedUnavailableError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name} (tags: {tags or 'none'}); "
                f"pass an existing checkpoint path")
    if pretrained is not None and not is_file:
        _check_reachable(name, pretrained, cache_dir)
    try:
        model, _, _ = _open_clip().create_model_and_transforms(
            name, pretrained=pretrained, device=device, cache_dir=cache_dir, weights_only=True, **kwargs)
    except Exception as e:              # noqa: BLE001 - every failure to read a weights file is one user error
        if is_file:
            looks = architectures_like(pretrained)
            hint = (f"; the file looks like {' or '.join(looks[:4])}: pass --model {looks[0]}"
                    if looks and name not in looks else "")
            raise ValueError(f"cannot load {pretrained} as {name} weights: {_short_reason(e)}{hint}; expected an "
                             f"open_clip state dict of {name} (.safetensors, .pt, .pth or .bin), e.g. a run's "
                             f"model_*.safetensors or open_clip's file for this architecture") from None
        if not isinstance(e, RuntimeError) or "download" not in str(e).lower():
            raise
        raise PretrainedUnavailableError(
            f"could not download pretrained weights {name}/{pretrained} (offline?): fetch the file on a "
            f"connected machine and pass its path instead, e.g. --pretrained /path/to/open_clip_model.safetensors"
        ) from None
    model.eval()
    tokenizer = tiny_tokenizer() if is_tiny else _open_clip().get_tokenizer(name)
    if is_file:
        weights = f"file:{Path(pretrained).name}@{file_digest(pretrained)}"
    else:
        weights = pretrained or "random-init"
    return LoadedCLIP(model, tokenizer, make_transform(model.visual.preprocess_cfg), name, pretrained,
                      f"{name}/{weights}")
