"""The zero-shot protocol: one model, one dataset, prompt-ensemble classifier, accuracy per domain."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from clipood_kit.evaluation import features as evaluation
from clipood_kit.data import WORLD, TransformedSubset, open_dataset
from clipood_kit.data import world as world_mod
from clipood_kit.models.loader import TINY_NAME, load_clip


@dataclass
class ZeroShotConfig:
    model: str = TINY_NAME
    pretrained: Optional[str] = "default"
    data: str = WORLD                     # "world" or a DomainBed-style folder
    per_cell: int = 40                    # world only: images per (style, class)
    seed: int = 1                         # world only: seed of the evaluation images
    templates: Optional[List[str]] = None  # None: the world's templates for the tiny model or world data
    batch_size: int = 256
    device: str = "auto"


def default_templates(model: str, data: str) -> List[str]:
    """The world's own templates where the model or the data is the world's; CLIP-style ones otherwise."""
    if model == TINY_NAME or data == WORLD:
        return world_mod.prompt_templates()
    return list(evaluation.DEFAULT_TEMPLATES)


def run_zeroshot(cfg: ZeroShotConfig, progress: bool = True) -> Dict:
    """Accuracy (%) per domain and their mean, with the config and model id (JSON-ready)."""
    start = time.perf_counter()
    dataset = open_dataset(cfg.data, cfg.per_cell, cfg.seed)
    dataset.verify(range(len(dataset)))          # every broken image, listed, before the model loads
    loaded = load_clip(cfg.model, cfg.pretrained, device=cfg.device)
    templates = cfg.templates or default_templates(cfg.model, cfg.data)
    accuracy = evaluation.zeroshot_accuracy(
        loaded.model, loaded.tokenizer, TransformedSubset(dataset, range(len(dataset)), loaded.preprocess),
        dataset.classes, dataset.domains, templates, cfg.batch_size, progress=progress)
    return {
        "protocol": "zeroshot",
        "model_id": loaded.model_id,
        "dataset": dataset.describe(),
        "templates": templates,
        "config": asdict(cfg),
        "accuracy": accuracy,
        "seconds": round(time.perf_counter() - start, 2),
    }


def format_table(accuracy: Dict[str, float], title: str = "accuracy (%)") -> str:
    width = max(len(k) for k in accuracy) + 2
    lines = [f"{'domain':<{width}}{title}"] + [f"{k:<{width}}{v:6.1f}" for k, v in accuracy.items()]
    return "\n".join(lines)


def template_effect(loaded, dataset, template_sets: Dict[str, List[str]],
                    batch_size: int = 256) -> Dict[str, Dict[str, float]]:
    """Zero-shot accuracy per domain for several prompt-template sets; the images are encoded once."""
    enc = evaluation.encode_images(loaded.model.visual, TransformedSubset(dataset, range(len(dataset)), loaded.preprocess),
                                   batch_size)
    out = {}
    for name, templates in template_sets.items():
        clf = evaluation.text_classifier(loaded.model, loaded.tokenizer, dataset.classes, templates).cpu()
        out[name] = evaluation.accuracy_by_domain(evaluation.classify(enc["features"], clf), enc["labels"],
                                                  enc["domains"], dataset.domains)
    return out
