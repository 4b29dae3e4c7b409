"""The CLIP-likeness card: the properties of a CLIP that the toolkit's methods act on, measured on a dataset.

- class accuracy per domain: zero-shot, with the template ensemble (CLIP's prompt ensembling);
- domain (context) accuracy: each image's domain predicted by CAR-FT's context classifier over one template per
  domain, `w_m = norm(mean_c norm(g(template_m(c))))` (Mao et al., arXiv 2211.16175); the contexts' pairwise
  cosine says how far apart the model holds them;
- class text cosine (mean, min, max over pairs of distinct classes) under "a photo of a {}." (the official
  CLIPood classifier) and under the ensemble: the structure MMS turns into margins (Shu et al., Eq. 4);
- within-family minus between-family class text cosine, where the dataset knows a taxonomy;
- each class's nearest class by text cosine;
- the logit scale (MCM and MSP are softmaxes at temperature 1 and 1/scale over cosines);
- the modality gap: the cosine of matching image-text pairs beside the class-text and image-image cosines.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from clipood_kit.evaluation import features as evaluation
from clipood_kit.data import WORLD, TransformedSubset, open_dataset
from clipood_kit.data import world as world_mod
from clipood_kit.models.loader import TINY_NAME, load_clip
from clipood_kit.evaluation.zeroshot import default_templates

PHOTO_TEMPLATE = "a photo of a {}."


def domain_templates(domains: Sequence[str], is_world: bool) -> List[str]:
    """One context template per domain: the world's caption words ("a neon sign of a {}."), or for folders the
    domain name with underscores as spaces ("art_painting" -> "a art painting of a {}.")."""
    if is_world:
        return [f"a {world_mod.STYLES[d]} of a {{}}." for d in domains]
    return [f"a {d.replace('_', ' ')} of a {{}}." for d in domains]


def off_diagonal(sim: torch.Tensor) -> torch.Tensor:
    """The entries of a square matrix off its diagonal, flattened."""
    return sim[~torch.eye(len(sim), dtype=torch.bool)]


def cosine_stats(features: torch.Tensor) -> Dict[str, float]:
    """Mean, min and max cosine over pairs of distinct rows of L2-normalised `features`."""
    off = off_diagonal(features @ features.T)
    return {"mean": off.mean().item(), "min": off.min().item(), "max": off.max().item()}


def family_gap(features: torch.Tensor, classes: Sequence[str], families: Dict[str, Sequence[str]]) -> Dict[str, float]:
    """Mean text cosine of pairs of distinct classes in the same family, in different families, and the gap."""
    family = torch.tensor([next(i for i, m in enumerate(families.values()) if c in m) for c in classes])
    sim = features @ features.T
    same = family[:, None] == family[None, :]
    distinct = ~torch.eye(len(classes), dtype=torch.bool)
    within, between = sim[same & distinct].mean().item(), sim[~same].mean().item()
    return {"within": within, "between": between, "gap": within - between}


@torch.no_grad()
def clip_card(loaded, dataset, templates: Sequence[str], is_world: bool = False, batch_size: int = 256) -> Dict:
    """The card of one model on one dataset (JSON-ready); see the module docstring for each entry. `templates`:
    the zero-shot ensemble (`zeroshot.default_templates` gives the toolkit's choice)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    classes, domains = list(dataset.classes), list(dataset.domains)
    templates = list(templates)
    enc = evaluation.encode_images(model.visual, TransformedSubset(dataset, range(len(dataset)), loaded.preprocess),
                                   batch_size)
    feats, labels, doms = enc["features"], enc["labels"], enc["domains"]
    ensemble = evaluation.text_classifier(model, tokenizer, classes, templates).cpu()
    photo = evaluation.text_classifier(model, tokenizer, classes, [PHOTO_TEMPLATE]).cpu()
    ctx_templates = domain_templates(domains, is_world)
    contexts = evaluation.context_classifier(model, tokenizer, classes, ctx_templates).cpu()

    class_acc = evaluation.accuracy_by_domain(evaluation.classify(feats, ensemble), labels, doms, domains)
    domain_pred = evaluation.classify(feats, contexts)
    domain_acc = evaluation.accuracy_by_domain(domain_pred, doms, doms, domains)
    nearest = off_diagonal_argmax(photo @ photo.T)
    photo_stats = cosine_stats(photo)
    card = {
        "model_id": loaded.model_id,
        "dataset": dataset.describe(),
        "templates": templates,
        "class_accuracy": class_acc,
        "domain_templates": ctx_templates,
        "domain_accuracy": domain_acc,
        "context_cosine": cosine_stats(contexts),
        "class_text_cosine": {"photo": photo_stats, "ensemble": cosine_stats(ensemble)},
        "family_cosine": family_gap(photo, classes, dataset.families) if dataset.families else None,
        "nearest_class": {c: classes[int(j)] for c, j in zip(classes, nearest)},
        "logit_scale": model.logit_scale.exp().item(),
        "modality_gap": {
            "matching_image_text": (feats * photo[labels]).sum(1).mean().item(),
            "class_text": photo_stats["mean"],
            "image_image": image_image_cosine(feats),
        },
    }
    return card


def off_diagonal_argmax(sim: torch.Tensor) -> torch.Tensor:
    """Per row, the column of the largest entry other than the diagonal."""
    return sim.masked_fill(torch.eye(len(sim), dtype=torch.bool), float("-inf")).argmax(1)


def image_image_cosine(features: torch.Tensor) -> float:
    """Mean cosine over pairs of distinct images: (|sum f|^2 - N) / (N (N - 1)) for unit rows f."""
    n = len(features)
    total = features.sum(0)
    return ((total @ total).item() - n) / (n * (n - 1))


def run_card(model: str = TINY_NAME, pretrained: Optional[str] = "default", data: str = WORLD, per_cell: int = 20,
             seed: int = 1, templates: Optional[Sequence[str]] = None, device: str = "auto") -> Dict:
    """Load a model and a dataset and return their card (the `clipood-kit clip-card` command)."""
    dataset = open_dataset(data, per_cell, seed)
    dataset.verify(range(len(dataset)))          # every broken image, listed, before the model loads
    loaded = load_clip(model, pretrained, device=device)
    templates = templates or default_templates(model, data)
    return clip_card(loaded, dataset, templates, is_world=data == WORLD)


def format_card(card: Dict) -> str:
    """The card as a printed table."""
    def stats(s):
        return f"{s['mean']:.2f} (min {s['min']:.2f}, max {s['max']:.2f})"
    acc = card["class_accuracy"]
    dom = card["domain_accuracy"]
    rows = [("model", card["model_id"]), ("dataset", card["dataset"]["name"]),
            ("logit scale", f"{card['logit_scale']:.1f}"),
            ("zero-shot class accuracy (%)", ", ".join(f"{k} {v:.1f}" for k, v in acc.items())),
            ("zero-shot domain accuracy (%)", ", ".join(f"{k} {v:.1f}" for k, v in dom.items())),
            ("context (domain template) cosine", stats(card["context_cosine"])),
            ("class text cosine, 'a photo of a {}.'", stats(card["class_text_cosine"]["photo"])),
            ("class text cosine, ensemble", stats(card["class_text_cosine"]["ensemble"]))]
    fam = card["family_cosine"]
    if fam:
        rows.append(("within - between family cosine",
                     f"{fam['gap']:.2f} (within {fam['within']:.2f}, between {fam['between']:.2f})"))
    gap = card["modality_gap"]
    rows.append(("cosine: matching image-text / class text / image-image",
                 f"{gap['matching_image_text']:.2f} / {gap['class_text']:.2f} / {gap['image_image']:.2f}"))
    rows.append(("nearest class", ", ".join(f"{c}->{n}" for c, n in card["nearest_class"].items())))
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in rows)
