"""Pretraining of the embedded tiny CLIP on the world, with open_clip's contrastive loss.

Every step renders a fresh batch (the world is infinite), so the model never sees an image twice.

- **Grouped batches**: a batch is `groups` groups of `group_size` images; the images of a group share one style
  and one colour, and the groups have distinct (style, colour) pairs. Inside a group the hard negatives differ
  only in shape (and size), so the class must be read; across groups the style and colour words must be read,
  so the text tower learns its contexts ("a sketch of ..." vs "a photo of ...", CAR-FT's premise).
- **Captions at several granularities**, as on the web: the class ("a sketch of a small red hexagon") or its
  family ("a neon sign of a polygon"), with attributes dropped at random, and with the near misses of web
  captions (a class caption sometimes names a sibling in the family: "a pentagon" under a hexagon). Family
  captions and near misses tie the members of a family together, which gives the class text features their
  semantic structure; at CLIP's temperature, clean class captions alone push the most similar classes apart.
- **A rare style**: a share `rare_style_share` of the groups is drawn in a rare style (`world.RARE_STYLES`, the
  blueprint), and only `rare_class_share` of their captions name the class (the others name its family), as
  CLIP met few satellite images or texture close-ups, captioned loosely. The rare style is the downstream domain
  of the prompt-learning task, where zero-shot CLIP has headroom (CoOp's largest gains are on EuroSAT and DTD).
- **Held-out concepts**: a share `concept_share` of each group's images shows a line figure no task names
  (`world.GLYPHS`), and a share `texture_share` of the groups are patterns with no object (`far_ood.textures`),
  each captioned with its own words ("a sketch of a red spiral", "red stripes"): CLIP was pretrained on far more
  concepts than a task's classes, so a texture or an unknown object finds no confident class (MCM's premise).
- **Temperature**: CLIP learns its logit scale and ends at its clamp, 100. On this small world a learned scale
  settled near 17 (the earlier tiny CLIP; a trial with grouped batches: 16.8), so the scale is not learned here: it
  stays at CLIP's initial 1/0.07 while the features form, then follows a log-linear ramp to `scale_end` over the
  `scale_ramp` shares of training and is held there, so the shipped model works at CLIP's temperature.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import open_clip
import torch
from open_clip.loss import ClipLoss
from tqdm.auto import tqdm

from clipood_kit.evaluation.card import clip_card, format_card
from clipood_kit.data import world
from clipood_kit.data.datasets import WorldDataset
from clipood_kit.core.io import check_writable_folder, save_weights, write_json, write_text
from clipood_kit.models.loader import CONFIG_DIR, TINY_NAME, file_digest, load_clip, tiny_weights_path
from clipood_kit.core.schedules import cosine_lr

# Caption forms with their probabilities. {what} is the class name, or (FAMILY_SHARE of the time) its family.
CAPTION_FORMS = (
    ("a {style} of a {size} {colour} {what}", 0.30),
    ("a {style} of a {colour} {what}", 0.15),
    ("a {style} of a {size} {what}", 0.10),
    ("a {style} of a {what}", 0.20),
    ("a {size} {colour} {what}", 0.10),
    ("a {colour} {what}", 0.05),
    ("a {what}", 0.10),
)
FAMILY_SHARE = 0.5
SIBLING_SHARE = 0.25
# Caption forms of a texture group's images ({colour}: the pattern's first colour).
TEXTURE_FORMS = (("{colour} {pattern}", 0.5), ("{pattern}", 0.25), ("a photo of {colour} {pattern}", 0.25))


@dataclass
class PretrainConfig:
    steps: int = 4000
    groups: int = 4                 # a batch is groups x group_size images
    group_size: int = 64            # images of a group share one style and one colour
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    scale_start: float = 1 / 0.07   # CLIP's initial logit scale
    scale_end: float = 100.0        # CLIP's clamp, where OpenAI's CLIP ends
    scale_ramp: tuple = (0.7, 0.95)  # log(scale) goes linearly from start to end between these shares of the steps
    family_share: float = FAMILY_SHARE    # captions that name the family instead of the class
    sibling_share: float = SIBLING_SHARE  # class captions that name another member of the family (near misses)
    # The shipped recipe (attempt 6 of docs/world-attempts.md) for the next four:
    rare_style_share: float = 0.02        # groups drawn in a rare style (world.RARE_STYLES)
    rare_class_share: float = 0.1         # captions of rare-style images that may name the class (else the family)
    concept_share: float = 0.15           # images of an object group that show a held-out glyph (world.GLYPHS)
    texture_share: float = 0.1            # groups of textures (far_ood.textures) instead of objects
    seed: int = 0
    eval_per_cell: int = 20
    eval_seed: int = 10_000


def logit_scale_at(step: int, cfg: PretrainConfig) -> float:
    """exp of log(scale) held at log(scale_start), then linear to log(scale_end) between the shares scale_ramp of
    the steps, then held."""
    first, last = (r * cfg.steps for r in cfg.scale_ramp)
    p = min(1.0, max(0.0, (step - first) / max(1.0, last - first)))
    return math.exp((1 - p) * math.log(cfg.scale_start) + p * math.log(cfg.scale_end))


def pretraining_world(cfg: PretrainConfig) -> world.WorldConfig:
    """The world pretraining draws from: the default styles, and the rare ones when `rare_style_share` > 0."""
    styles = world.DEFAULT_STYLES + (world.RARE_STYLES if cfg.rare_style_share > 0 else ())
    return world.WorldConfig(styles=styles)


def grouped_batch(cfg: PretrainConfig, wc: world.WorldConfig, gen: torch.Generator) -> world.WorldBatch:
    """`groups` groups of `group_size` images; each group one (style, colour) pair, distinct across groups;
    classes and sizes uniform at random. A group's style is a rare one (`world.RARE_STYLES` in `wc`) with
    probability `rare_style_share`, else one of the others; a share `concept_share` of its images show a held-out
    glyph (label `len(wc.classes) + k` for `world.GLYPHS`'s k-th)."""
    rare = [i for i, s in enumerate(wc.styles) if s in world.RARE_STYLES]
    common = [i for i, s in enumerate(wc.styles) if s not in world.RARE_STYLES]
    pairs = len(wc.styles) * len(wc.colours)
    if cfg.groups > len(common) * len(wc.colours):
        raise ValueError(f"groups={cfg.groups} exceeds the {len(common) * len(wc.colours)} distinct (style, colour) "
                         f"pairs of the world's common styles")
    if not rare or cfg.rare_style_share <= 0:
        pair = torch.randperm(len(common) * len(wc.colours), generator=gen)[:cfg.groups]
        styles_g, colours_g = torch.tensor(common)[pair // len(wc.colours)], pair % len(wc.colours)
    else:
        is_rare = (torch.rand(cfg.groups, generator=gen) < cfg.rare_style_share).tolist()
        order = torch.randperm(pairs, generator=gen).tolist()
        chosen = []
        for r in is_rare:
            pool = rare if r else common
            pick = next((p for p in order if p // len(wc.colours) in pool and p not in chosen), None)
            if pick is None:
                raise ValueError(f"{sum(is_rare)} rare-style groups need distinct (style, colour) pairs, and the "
                                 f"rare styles have {len(rare) * len(wc.colours)}: lower groups or rare_style_share")
            chosen.append(pick)
        chosen = torch.tensor(chosen)
        styles_g, colours_g = chosen // len(wc.colours), chosen % len(wc.colours)
    n = cfg.groups * cfg.group_size
    styles, colours = styles_g.repeat_interleave(cfg.group_size), colours_g.repeat_interleave(cfg.group_size)
    labels = torch.randint(len(wc.classes), (n,), generator=gen)
    sizes = torch.randint(len(wc.sizes), (n,), generator=gen)
    shapes = None
    if cfg.concept_share > 0:
        glyph = torch.rand(n, generator=gen) < cfg.concept_share
        labels = torch.where(glyph, len(wc.classes) + torch.randint(len(world.GLYPHS), (n,), generator=gen), labels)
        shapes = [world.SHAPES[c] for c in wc.classes] + list(world.GLYPHS.values())
    images = world.render(labels, styles, colours, sizes, wc, gen, shapes=shapes)
    return world.WorldBatch(images, labels, styles, colours, sizes, wc)


def captions(batch: world.WorldBatch, gen: torch.Generator, family_share: float = FAMILY_SHARE,
             sibling_share: float = SIBLING_SHARE, rare_class_share: float = 1.0) -> List[str]:
    """One caption per image: a form drawn from CAPTION_FORMS naming its family (probability `family_share`),
    else its class, except that a share `sibling_share` of class captions names another member of the same
    family, the near-miss errors of web captions ("a pentagon" under a hexagon). An image of a rare style names
    its class with probability `rare_class_share` only (else its family); a held-out glyph (a label past the
    classes) is named by its own word."""
    c = batch.config
    probs = torch.tensor([p for _, p in CAPTION_FORMS])
    forms = torch.multinomial(probs, len(batch), replacement=True, generator=gen).tolist()
    family = (torch.rand(len(batch), generator=gen) < family_share).tolist()
    sibling = (torch.rand(len(batch), generator=gen) < sibling_share).tolist()
    pick = torch.rand(len(batch), generator=gen).tolist()
    loose = (torch.rand(len(batch), generator=gen) >= rare_class_share).tolist()
    glyphs = list(world.GLYPHS)
    out = []
    for i, f in enumerate(forms):
        label, style = int(batch.labels[i]), c.styles[batch.domains[i]]
        if label >= len(c.classes):
            what = glyphs[label - len(c.classes)]
        else:
            cls = c.classes[label]
            if family[i] or (style in world.RARE_STYLES and loose[i]):
                what = world.FAMILY_OF[cls]
            elif sibling[i]:
                others = [m for m in world.FAMILIES[world.FAMILY_OF[cls]] if m != cls and m in c.classes]
                what = others[int(pick[i] * len(others))] if others else cls
            else:
                what = cls
        form = CAPTION_FORMS[f][0]
        if style in world.RARE_STYLES:                # a blueprint has no colour to name
            form = form.replace("{colour} ", "")
        out.append(form.format(style=world.STYLES[style], size=c.sizes[batch.sizes[i]],
                               colour=c.colours[batch.colours[i]], what=what))
    return out


def texture_group(n: int, wc: world.WorldConfig, gen: torch.Generator):
    """n texture images (`far_ood.texture_images`) and their captions (TEXTURE_FORMS)."""
    from clipood_kit.data import far_ood
    images, patterns, colours = far_ood.texture_images(n, gen, wc)
    probs = torch.tensor([p for _, p in TEXTURE_FORMS])
    forms = torch.multinomial(probs, n, replacement=True, generator=gen).tolist()
    texts = [TEXTURE_FORMS[f][0].format(colour=wc.colours[int(c)], pattern=world.PATTERNS[int(p)])
             for f, p, c in zip(forms, patterns, colours)]
    return images, texts


def pretraining_batch(cfg: PretrainConfig, wc: world.WorldConfig, gen: torch.Generator):
    """(images uint8 N x 3 x H x W, captions) of one step: `grouped_batch` with its `captions`, a share
    `texture_share` of its groups replaced by texture groups (`texture_group`)."""
    batch = grouped_batch(cfg, wc, gen)
    texts = captions(batch, gen, cfg.family_share, cfg.sibling_share, cfg.rare_class_share)
    images = batch.images
    if cfg.texture_share > 0:
        swap = (torch.rand(cfg.groups, generator=gen) < cfg.texture_share).nonzero().flatten().tolist()
        if swap:
            images = images.clone()
            for g in swap:
                rows = slice(g * cfg.group_size, (g + 1) * cfg.group_size)
                images[rows], texts[rows] = texture_group(cfg.group_size, wc, gen)
    return images, texts


def recipe_text(cfg: PretrainConfig, wc: world.WorldConfig) -> str:
    """The pretraining data of `cfg` in words, for the model card."""
    return (f"the embedded world (clipood_kit.data.world), fresh batches each step, {len(wc.classes)} classes x "
            f"{len(wc.styles)} styles, batches of {cfg.groups} groups x {cfg.group_size} images sharing style and "
            f"colour, {cfg.family_share:.0%} of captions name the family, {cfg.sibling_share:.0%} of the others a "
            f"sibling class; {cfg.rare_style_share:.0%} of groups in the rare style {list(world.RARE_STYLES)} "
            f"({cfg.rare_class_share:.0%} of their captions name the class), {cfg.concept_share:.0%} of object "
            f"images a held-out glyph {list(world.GLYPHS)}, {cfg.texture_share:.0%} of groups textures "
            f"{list(world.PATTERNS)}, each named by its own word")


def pretrain(cfg: PretrainConfig, out: Path | None = None, progress: bool = True,
             calibration_seeds: Sequence[int] = ()) -> Dict:
    """Train the tiny CLIP from scratch; write weights (safetensors) and a model card; return the card. The card
    records the calibration rows over `calibration_seeds` (`evaluation.calibration.world_calibration`) if any."""
    out = Path(out) if out is not None else tiny_weights_path()
    if out.is_dir():       # refused before an hour of training, not when the weights are written
        raise IsADirectoryError(f"--out {out} is a folder; give the weights file to write, e.g. "
                                f"{out / 'tiny-clip-world.safetensors'} (its model card goes beside it)")
    check_writable_folder(out.parent, "--out", "the weights and the model card")
    torch.manual_seed(cfg.seed)
    loaded = load_clip(TINY_NAME, pretrained=None)
    model, tokenizer, preprocess = loaded
    model.train()
    loss_fn = ClipLoss()
    model.logit_scale.requires_grad_(False)          # set by the schedule (logit_scale_at), not learned
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    wc = pretraining_world(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain tiny CLIP", disable=not progress)
    history = []
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(logit_scale_at(step, cfg)))
        pixels, words = pretraining_batch(cfg, wc, gen)
        images = preprocess(pixels)
        texts = tokenizer(words)
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": loss.item(), "logit_scale": logit_scale.item()})
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{logit_scale.item():.1f}")
    seconds = time.perf_counter() - start

    model.eval()
    eval_data = WorldDataset(cfg.eval_per_cell, cfg.eval_seed, world.WorldConfig())
    state = model.state_dict()
    save_weights(out, state, metadata={"architecture": TINY_NAME, "seed": str(cfg.seed)})
    clip_like = clip_card(loaded, eval_data, world.prompt_templates(eval_data.config), is_world=True)
    clip_like["model_id"] = f"{TINY_NAME}/file:{out.name}@{file_digest(out)}"
    table = clip_like["class_accuracy"]
    card = {
        "architecture": TINY_NAME,
        "architecture_config": json.loads((CONFIG_DIR / f"{TINY_NAME}.json").read_text()),
        "parameters": sum(v.numel() for v in state.values()),
        "weights_file": out.name,
        "file_bytes": out.stat().st_size,
        "data": recipe_text(cfg, wc),
        "command": f"clipood-kit pretrain --steps {cfg.steps} --seed {cfg.seed}",
        "config": asdict(cfg),
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "final_logit_scale": model.logit_scale.exp().item(),
        "zeroshot_eval": {"data": eval_data.name, "templates": world.prompt_templates(eval_data.config),
                          "accuracy": table},
        "clip_card": clip_like,
        "history": history,
    }
    if calibration_seeds:
        from clipood_kit.evaluation.calibration import world_calibration
        card["calibration"] = world_calibration(loaded, list(calibration_seeds))
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
- Command: `{card['command']}` (seed {card['config']['seed']}, {card['config']['steps']} steps, batch {card['config']['groups']} x {card['config']['group_size']})
- Time: {card['train_seconds']:.0f} s on {card['machine']} (torch {card['torch']}, open_clip {card['open_clip']})
- Final logit scale: {card['final_logit_scale']:.1f}

## Zero-shot accuracy (%), {len(acc) - 1} styles, {card['architecture_config']['embed_dim']}-d features
Evaluated on {card['zeroshot_eval']['data']} with the template ensemble {card['zeroshot_eval']['templates']}.

| style | accuracy |
|---|---|
{rows}

## CLIP-likeness card (`clipood-kit clip-card`), same images

```
{format_card(card['clip_card'])}
```
""" + calibration_markdown(card.get("calibration")) + attempts_markdown(card.get("attempts"))


def attempts_markdown(attempts: List[Dict] | None) -> str:
    """The card's section on the worlds tried before this one, in order, each with its calibration rows (the
    shipped card's history, docs/world-attempts.md), or nothing."""
    if not attempts:
        return ""
    rows = "\n".join(f"| {a['attempt']} | {a['world']} | {a['task']} | {a['zero_shot']} | {a['coop_change']} | "
                     f"{a['mcm']} | {a['seeds']} |" for a in attempts)
    return f"""
## What was tried, in order (docs/world-attempts.md)
Each attempt's world and pretraining, and its calibration rows; no held-out row (a method's claim) was computed
while choosing.

| attempt | world and pretraining | task | zero-shot base / new | CoOp change base / new | MCM AUROC glyphs / textures | seeds |
|---|---|---|---|---|---|---|
{rows}
"""


def calibration_markdown(calibration: Dict | None) -> str:
    """The card's section on the calibration rows (`evaluation.calibration`), or nothing when not measured."""
    if not calibration:
        return ""
    from clipood_kit.evaluation.calibration import format_rows
    seeds = calibration["seeds"]
    per_seed = "\n".join(
        f"| {s} | {r['zero_shot']['base']:.1f} / {r['zero_shot']['new']:.1f} | {r['coop_change']['base']:+.1f} / "
        f"{r['coop_change']['new']:+.1f} | " + " / ".join(f"{v:.1f}" for v in r["mcm_far"].values()) + " |"
        for s, r in zip(seeds, calibration["runs"]))
    far = " / ".join(calibration["runs"][0]["mcm_far"])
    return f"""
## Calibration rows (`clipood-kit clip-card --calibration {' '.join(map(str, seeds))}`)
What CLIP itself does on a downstream task, measured on the world's prompt-learning task (the blueprint style;
docs/world-attempts.md lists every attempt and its rows):

```
{format_rows(calibration['mean'], seeds)}
```

| seed | zero-shot base / new | CoOp change base / new | zero-shot MCM AUROC {far} |
|---|---|---|---|
{per_seed}
"""
