"""Zero-shot classifiers from prompts, image feature extraction, and accuracy per domain.

Classifier (CLIP, Radford et al. 2021, prompt ensembling): for class c and templates m = 1..M,
`t_c = norm( mean_m norm(g(template_m(c))) )`; prediction `argmax_c cos(f, t_c)`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from clipood_kit.evaluation import ood
from clipood_kit.models.adapted import context_features, ensemble_text_features

DEFAULT_TEMPLATES = [
    "a photo of a {}.", "a sketch of a {}.", "a painting of a {}.", "a cartoon of a {}.",
    "art of the {}.", "a drawing of a {}.", "a rendering of a {}.", "a photo of the large {}.",
]


@torch.no_grad()
def text_classifier(model: torch.nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                    device: torch.device | str | None = None) -> torch.Tensor:
    """C x D matrix of L2-normalised, template-ensembled class text features (no gradient), computed on `device`
    (default: the model's)."""
    device = device or next(model.parameters()).device
    if not templates:
        raise ValueError("templates is empty: give at least one prompt template such as 'a photo of a {}.'")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"template(s) {bad} lack the '{{}}' placeholder for the class name")
    per_class = [model.encode_text(tokenizer([t.format(name) for t in templates]).to(device)).float()
                 for name in classnames]
    return ensemble_text_features(torch.stack(per_class, dim=1))


@torch.no_grad()
def context_classifier(model: torch.nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                       device: torch.device | str | None = None) -> torch.Tensor:
    """M x D context classifier of CAR-FT (`models.adapted.context_features`), one row per template."""
    device = device or next(model.parameters()).device
    per_template = [model.encode_text(tokenizer([t.format(c) for c in classnames]).to(device)).float()
                    for t in templates]
    return context_features(torch.stack(per_template))


def autocast(device, precision: str):
    """The autocast context of a run's precision ("no": none) on `device`."""
    import contextlib
    if precision in (None, "no"):
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=dtypes[precision])


def has_local_features(visual: torch.nn.Module) -> bool:
    """True for open_clip ViT towers whose last block is a standard residual attention block with class-token
    pooling: the towers `local_image_features` handles. ResNet towers (the tiny CLIP's) have no patch tokens."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    return (isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.pool_type == "tok"
            and not visual.final_ln_after_pool and visual.transformer.batch_first
            and type(visual.transformer.resblocks[-1]) is ResidualAttentionBlock)


def local_image_features(visual: torch.nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(global N x D, local N x P x D) unnormalised features of an open_clip ViT tower in one pass.

    Local features (GL-MCM, Miyai et al. 2023, after MaskCLIP): the last block with its attention replaced by the
    value path, y = x + out_proj(W_v ln_1(x)); y = y + mlp(ln_2(y)) (query and key dropped, so each patch keeps
    its own content), then ln_post and the projection on every patch token. The global feature is the tower's
    usual output (class token through the unmodified last block).
    """
    if not has_local_features(visual):
        raise ValueError(f"GL-MCM needs the patch tokens of an open_clip ViT image tower; {type(visual).__name__} "
                         f"has none (the tiny CLIP's tower is a ModifiedResNet): use MCM")
    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    width = x.shape[-1]
    values = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
    local = x + last.ls_1(last.attn.out_proj(values))
    local = local + last.ls_2(last.mlp(last.ln_2(local)))
    pooled = visual.ln_post(last(x)[:, 0])
    local = visual.ln_post(local[:, 1:])
    if visual.proj is not None:
        pooled, local = pooled @ visual.proj, local @ visual.proj
    return pooled, local


@torch.no_grad()
def encode_images(visual: torch.nn.Module, dataset: Dataset, batch_size: int = 256, device: torch.device | str | None = None,
                  num_workers: int = 0, progress: bool = False, desc: str = "encode",
                  local_classifier: Optional[torch.Tensor] = None,
                  adapt: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  precision: str = "no") -> Dict[str, torch.Tensor]:
    """L2-normalised image features of an image tower (`model.visual`) with labels and domains:
    {'features', 'labels', 'domains'}. The train/eval mode of each of the tower's modules is restored afterwards. `adapt` acts on the
    tower's raw features before they are normalised (a method's image adapters, `AdaptedCLIP.image_features`).
    `precision` "bf16" or "fp16" runs the tower under autocast (features are normalised in fp32).

    With `local_classifier` (C x D class text features; ViT towers only), also 'local_mcm': per image the local
    part of GL-MCM, max over patches p and classes i of softmax_i(cos(local_p, t_i)) (see `ood.local_mcm`).
    """
    device = device or next(visual.parameters()).device
    modes = {m: m.training for m in visual.modules()}     # restored module by module (frozen batch norm stays)
    visual.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    dtype = next(visual.parameters()).dtype
    feats, labels, domains, local_mcm = [], [], [], []
    for images, y, d in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = images.to(device, dtype=dtype)
        with autocast(device, precision):
            if local_classifier is None:
                pooled, local = visual(images), None
            else:
                pooled, local = local_image_features(visual, images)
            pooled = adapt(pooled) if adapt else pooled
        feats.append(F.normalize(pooled.float(), dim=-1).cpu())
        if local is not None:
            cos = F.normalize(local.float(), dim=-1) @ local_classifier.to(local.device, torch.float32).T
            local_mcm.append(ood.local_mcm(cos).cpu())
        labels.append(y)
        domains.append(d)
    for m, mode in modes.items():
        m.training = mode
    out = {"features": torch.cat(feats), "labels": torch.cat(labels), "domains": torch.cat(domains)}
    if local_mcm:
        out["local_mcm"] = torch.cat(local_mcm)
    return out


def accuracy_by_domain(predictions: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                       domain_names: Sequence[str]) -> Dict[str, float]:
    """Accuracy (%) per domain present, plus 'mean' (unweighted mean over those domains)."""
    out = {}
    for d in domains.unique(sorted=True).tolist():
        m = domains == d
        out[domain_names[d]] = 100.0 * (predictions[m] == labels[m]).float().mean().item()
    if out:
        out["mean"] = sum(out.values()) / len(out)
    return out


def classify(features: torch.Tensor, classifier: torch.Tensor, class_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Predicted class ids; with `class_ids`, only those classes compete (open-class protocols)."""
    logits = features @ classifier.T
    if class_ids is None:
        return logits.argmax(1)
    ids = torch.as_tensor(list(class_ids), dtype=torch.long)
    return ids[logits[:, ids].argmax(1)]


def zeroshot_accuracy(model, tokenizer, dataset: Dataset, classnames: Sequence[str], domain_names: Sequence[str],
                      templates: Sequence[str], batch_size: int = 256, device=None, progress: bool = False,
                      class_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Zero-shot accuracy per domain of `dataset` (items: image, label, domain)."""
    classifier = text_classifier(model, tokenizer, classnames, templates, device).cpu()
    enc = encode_images(model.visual, dataset, batch_size, device, progress=progress, desc="zero-shot")
    return accuracy_by_domain(classify(enc["features"], classifier, class_ids), enc["labels"], enc["domains"],
                              domain_names)
