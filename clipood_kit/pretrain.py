"""Pretraining of the embedded tiny CLIP on the world, with open_clip's contrastive loss.

Every step renders a fresh batch (the world is infinite), so the model never sees an image twice. Each batch
uses only a few colours and styles: with many, the contrastive task is solved by colour and style alone; with
few, the model must tell shapes apart. Captions drop attributes at random ("a sketch of a star", "a small red star",
"a star"), so short zero-shot prompts are in distribution.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

import open_clip
import torch
from open_clip.loss import ClipLoss
from tqdm.auto import tqdm

from . import evaluation
from .data import world
from .data.datasets import TransformedSubset, WorldDataset
from .io import save_weights, write_json, write_text
from .models.loader import TINY_NAME, load_clip, tiny_weights_path
from .optim import cosine_lr

# Which attributes a caption keeps, with their probabilities (the class name is always kept).
CAPTION_FORMS = (
    ("a {style} of a {size} {colour} {cls}", 0.30),
    ("a {style} of a {colour} {cls}", 0.15),
    ("a {style} of a {size} {cls}", 0.10),
    ("a {style} of a {cls}", 0.20),
    ("a {size} {colour} {cls}", 0.10),
    ("a {colour} {cls}", 0.05),
    ("a {cls}", 0.10),
)


@dataclass
class PretrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 60
    colours_per_batch: int = 2
    styles_per_batch: int = 1
    seed: int = 0
    eval_per_cell: int = 20
    eval_seed: int = 10_000


def captions(batch: world.WorldBatch, gen: torch.Generator) -> List[str]:
    """One caption per image, its form drawn from CAPTION_FORMS."""
    c = batch.config
    probs = torch.tensor([p for _, p in CAPTION_FORMS])
    forms = torch.multinomial(probs, len(batch), replacement=True, generator=gen).tolist()
    return [CAPTION_FORMS[f][0].format(style=world.STYLES[c.styles[batch.domains[i]]], size=c.sizes[batch.sizes[i]],
                                       colour=c.colours[batch.colours[i]], cls=c.classes[batch.labels[i]])
            for i, f in enumerate(forms)]


def pretrain(cfg: PretrainConfig, out: Path | None = None, progress: bool = True) -> Dict:
    """Train the tiny CLIP from scratch; write weights (safetensors) and a model card; return the card."""
    out = Path(out) if out is not None else tiny_weights_path()
    torch.manual_seed(cfg.seed)
    loaded = load_clip(TINY_NAME, pretrained=None)
    model, tokenizer, preprocess = loaded
    model.train()
    loss_fn = ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    wc = world.WorldConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain tiny CLIP", disable=not progress)
    history = []
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        colours = torch.randperm(len(wc.colours), generator=gen)[:cfg.colours_per_batch].tolist()
        styles = torch.randperm(len(wc.styles), generator=gen)[:cfg.styles_per_batch].tolist()
        batch = world.sample(cfg.batch_size, seed=int(torch.randint(2**31 - 1, (1,), generator=gen)), config=wc,
                             colours=colours, domains=styles)
        images = preprocess(batch.images)
        texts = tokenizer(captions(batch, gen))
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # scale at most 100, as in CLIP
        if step % 20 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": loss.item(), "logit_scale": logit_scale.item()})
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{logit_scale.item():.1f}")
    seconds = time.perf_counter() - start

    model.eval()
    eval_data = WorldDataset(cfg.eval_per_cell, cfg.eval_seed, wc)
    table = evaluation.zeroshot_accuracy(model, tokenizer, TransformedSubset(eval_data, range(len(eval_data)), preprocess),
                                         wc.classes, wc.styles,
                                         world.prompt_templates(wc))
    state = model.state_dict()
    save_weights(out, state, metadata={"architecture": TINY_NAME, "seed": str(cfg.seed)})
    card = {
        "architecture": TINY_NAME,
        "architecture_config": json.loads((Path(__file__).parent / "model_configs" / f"{TINY_NAME}.json").read_text()),
        "parameters": sum(v.numel() for v in state.values()),
        "weights_file": out.name,
        "file_bytes": out.stat().st_size,
        "data": "the embedded world (clipood_kit.data.world), fresh batches each step, "
                f"{len(wc.classes)} classes x {len(wc.styles)} styles, {cfg.colours_per_batch} colours and {cfg.styles_per_batch} styles per batch",
        "command": f"clipood-kit pretrain --steps {cfg.steps} --seed {cfg.seed}",
        "config": asdict(cfg),
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "final_logit_scale": model.logit_scale.exp().item(),
        "zeroshot_eval": {"data": eval_data.name, "templates": world.prompt_templates(wc), "accuracy": table},
        "history": history,
    }
    write_json(out.with_suffix(".card.json"), card)
    write_text(out.with_suffix(".md"), model_card_markdown(card))
    return card


def model_card_markdown(card: Dict) -> str:
    acc = card["zeroshot_eval"]["accuracy"]
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in acc.items())
    return f"""# Model card: {card['architecture']}

A tiny CLIP (open_clip `CLIP`, ModifiedResNet image tower, word-level text tower) pretrained from scratch on
clipood-kit's embedded world. It is the default backbone of the toolkit, so every notebook and protocol runs
offline. It knows only the world's words (`clipood_kit/model_configs/{card['architecture']}.vocab.json`).

- Architecture: `clipood_kit/model_configs/{card['architecture']}.json`, {card['parameters']:,} parameters
- Weights: `data/{card['weights_file']}` ({card['file_bytes'] / 1e6:.2f} MB, safetensors, fp32)
- Data: {card['data']}
- Command: `{card['command']}` (seed {card['config']['seed']}, {card['config']['steps']} steps, batch {card['config']['batch_size']})
- Time: {card['train_seconds']:.0f} s on {card['machine']} (torch {card['torch']}, open_clip {card['open_clip']})
- Final logit scale: {card['final_logit_scale']:.1f}

## Zero-shot accuracy (%), {len(acc) - 1} styles, {card['architecture_config']['embed_dim']}-d features
Evaluated on {card['zeroshot_eval']['data']} with the template ensemble {card['zeroshot_eval']['templates']}.

| style | accuracy |
|---|---|
{rows}
"""
