"""Calibration rows: what CLIP itself and its plainest few-shot baseline are documented to do, measured on any
model and data beside the published values (`clipood-kit clip-card --calibration`).

The embedded world and its tiny CLIP may be changed until these rows hold; the claims of the methods under test
(CoCoOp or OGEN against CoOp, CLIPood against CE, the OOD study's findings) are held-out rows, never used to
choose the world (`data/tiny-clip-world.md` lists each attempt with its rows).

- **Zero-shot base / new** on the prompt-learning task: each class split in halves (`base_new_split`), accuracy
  of base images among the base classes and of new images among the new classes (CoCoOp's protocol), with the
  task's hand-crafted template. Reference: CLIP ViT-B/16, mean over CoOp's 11 datasets, 69.34 / 74.22 (Zhou et
  al., CoCoOp, CVPR 2022, Table 1).
- **CoOp at its official schedule**, 16 shots of the base classes, change against zero-shot on base / new.
  Reference: 82.69 / 63.22 in the same table, +13.35 / -11.00. The schedule is KaiyangZhou/CoOp
  `configs/trainers/CoOp/vit_b16_ctxv1.yaml` (CoCoOp's base-to-new runs of CoOp): batch 32 (line 3), SGD (line 16)
  at lr 0.002 (line 17) for 200 epochs (line 18), cosine, one warm-up epoch at the constant lr 1e-5 (lines
  20-22), context initialised from "a photo of a" (line 32); Dassl's SGD momentum 0.9 and weight decay 5e-4
  (`dassl/config/defaults.py` OPTIM). The image tower is frozen in CoOp, so its features are computed once, with
  the evaluation transform (the official runs add random crops and flips).
- **Zero-shot MCM AUROC** on each far-OOD set, the ID images being the task's base-class test images scored
  against the base classes. Reference (ImageNet-1k ID, ViT-B/16; Ming et al., NeurIPS 2022, Table 1):
  iNaturalist 94.61, SUN 92.57, Places 89.77, Textures 86.11.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from clipood_kit.core.schedules import dassl_epoch_lr, dassl_steps_per_epoch
from clipood_kit.evaluation.ood import auroc, mcm

REFERENCES = {
    "zero_shot": {"base": 69.34, "new": 74.22, "source": "CoCoOp (Zhou et al., CVPR 2022) Table 1, mean of 11 datasets"},
    "coop_change": {"base": 82.69 - 69.34, "new": 63.22 - 74.22, "source": "CoCoOp Table 1: CoOp 82.69 / 63.22"},
    "mcm_far": {"iNaturalist": 94.61, "SUN": 92.57, "Places": 89.77, "Textures": 86.11,
                "source": "MCM (Ming et al., NeurIPS 2022) Table 1, ViT-B/16, ImageNet-1k ID"},
}
# the goals the embedded world is held to (mean of 3 seeds): issue "an embedded world where CLIP has something to
# learn", calibration rows
GOALS = {"zero_shot": (55.0, 80.0), "coop_change": {"base": 6.0, "new": -3.0}, "mcm_far": 85.0}


@dataclass(frozen=True)
class CoOpSchedule:
    """CoOp's official base-to-new schedule (see the module docstring for the lines)."""

    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_lr: float = 1e-5          # the first epoch, constant
    ctx_init: str = "a photo of a"


def split_accuracy(features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
                   class_ids: Sequence[int]) -> float:
    """Accuracy (%) of the images of `class_ids` among those classes only; `classifier` rows follow `class_ids`."""
    ids = torch.as_tensor(list(class_ids))
    keep = torch.isin(labels, ids)
    position = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    position[ids] = torch.arange(len(ids))
    predicted = (features[keep] @ classifier.T).argmax(1)
    return 100.0 * (predicted == position[labels[keep]]).float().mean().item()


def train_coop(loaded, class_names: Sequence[str], base: Sequence[int], features: torch.Tensor,
               labels: torch.Tensor, schedule: CoOpSchedule = CoOpSchedule(), seed: int = 0) -> Dict:
    """CoOp on frozen image features of the base classes (`features` of the shots, `labels` class ids): returns
    the trained context module and the loss of the first and last epoch."""
    from clipood_kit.methods.coop import PromptContext
    from clipood_kit.models.adapted import TextTower
    model, tokenizer = loaded.model, loaded.tokenizer
    text = TextTower(model)
    for p in text.parameters():
        p.requires_grad_(False)
    m = len(schedule.ctx_init.split())
    tokens = tokenizer([f"{schedule.ctx_init} {class_names[c]}." for c in base])
    with torch.no_grad():
        ctx = text.embed(tokens)[0, 1:1 + m]
    context = PromptContext(ctx, tokens)
    optimizer = torch.optim.SGD([context.ctx], lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    position = torch.full((len(class_names),), -1, dtype=torch.long)
    position[torch.as_tensor(list(base))] = torch.arange(len(base))
    keep = torch.isin(labels, torch.as_tensor(list(base)))
    x, y = features[keep], position[labels[keep]]
    scale = model.logit_scale.exp().item()
    per_epoch = dassl_steps_per_epoch(len(x), schedule.batch_size)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(schedule.epochs):
        for group in optimizer.param_groups:
            group["lr"] = dassl_epoch_lr(epoch, schedule.epochs, schedule.lr, schedule.warmup_lr)
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for k in range(per_epoch):
            idx = order[k * schedule.batch_size:(k + 1) * schedule.batch_size]
            logits = scale * x[idx] @ F.normalize(context.adapt_classes(None, text=text).float(), dim=-1).T
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / per_epoch)
    return {"context": context, "text": text, "losses": losses, "steps": per_epoch * schedule.epochs}


@torch.no_grad()
def calibration_rows(loaded, class_names: Sequence[str], base: Sequence[int], new: Sequence[int],
                     template: str, shots: tuple, test: tuple, far_ood: Dict[str, torch.Tensor],
                     schedule: CoOpSchedule = CoOpSchedule(), seed: int = 0) -> Dict:
    """The rows on one task. `shots` and `test`: (unit image features, class ids); `far_ood`: set name -> unit
    image features; `template`: the task's hand-crafted prompt ("a photo of a {}.")."""
    from clipood_kit.methods.coop import PromptContext
    model, tokenizer = loaded.model, loaded.tokenizer

    def classifier(ids, tpl=template):
        return F.normalize(model.encode_text(tokenizer([tpl.format(class_names[c]) for c in ids])).float(), dim=-1)

    test_f, test_y = test
    zero = {"base": split_accuracy(test_f, test_y, classifier(base), base),
            "new": split_accuracy(test_f, test_y, classifier(new), new)}
    with torch.enable_grad():
        coop = train_coop(loaded, class_names, base, *shots, schedule=schedule, seed=seed)
    learned = {}
    for name, ids in (("base", base), ("new", new)):
        tokens = tokenizer([f"{schedule.ctx_init} {class_names[c]}." for c in ids])
        feats = PromptContext(coop["context"].ctx, tokens).adapt_classes(None, text=coop["text"])   # the same context
        feats = F.normalize(feats.float(), dim=-1)
        learned[name] = split_accuracy(test_f, test_y, feats, ids)
    id_keep = torch.isin(test_y, torch.as_tensor(list(base)))
    base_text = classifier(base)
    id_scores = mcm(test_f[id_keep] @ base_text.T)
    far = {name: 100.0 * auroc(id_scores, mcm(f @ base_text.T)) for name, f in far_ood.items()}

    def profile(f):
        """What MCM reads of the cosines to the ID classes: its mean top-1 and the top-1 minus the mean."""
        c = f @ base_text.T
        return {"top1": c.max(1).values.mean().item(), "spread": (c.max(1).values - c.mean(1)).mean().item()}

    # diagnostics beside the row: max-cosine (max-logit) AUROC, and the cosine profiles MCM's softmax sees
    id_max = (test_f[id_keep] @ base_text.T).max(1).values
    diagnostics = {"max_cosine_auroc": {n: 100.0 * auroc(id_max, (f @ base_text.T).max(1).values)
                                        for n, f in far_ood.items()},
                   "profile": {"ID": profile(test_f[id_keep]), **{n: profile(f) for n, f in far_ood.items()}}}
    return {
        "template": template,
        "zero_shot": zero,
        "coop": {**learned, "steps": coop["steps"], "epochs": schedule.epochs,
                 "loss_first_last_epoch": [coop["losses"][0], coop["losses"][-1]]},
        "coop_change": {k: learned[k] - zero[k] for k in ("base", "new")},
        "mcm_far": far,
        "mcm_diagnostics": diagnostics,
    }


def holds(rows: Dict) -> Dict[str, bool]:
    """Whether each calibration goal (GOALS) holds on these rows (or their mean over seeds)."""
    low, high = GOALS["zero_shot"]
    return {
        "zero-shot base and new in [55, 80]": all(low <= rows["zero_shot"][k] <= high for k in ("base", "new")),
        "CoOp: base >= +6": rows["coop_change"]["base"] >= GOALS["coop_change"]["base"],
        "CoOp: new <= -3": rows["coop_change"]["new"] <= GOALS["coop_change"]["new"],
        "MCM far AUROC >= 85 on every set": all(v >= GOALS["mcm_far"] for v in rows["mcm_far"].values()),
    }


def mean_rows(runs: List[Dict]) -> Dict:
    """The mean of `calibration_rows` over seeds (numbers only)."""
    def mean(path):
        values = runs
        for key in path:
            values = [v[key] for v in values]
        return sum(values) / len(values)
    return {
        "zero_shot": {k: mean(("zero_shot", k)) for k in ("base", "new")},
        "coop_change": {k: mean(("coop_change", k)) for k in ("base", "new")},
        "mcm_far": {n: mean(("mcm_far", n)) for n in runs[0]["mcm_far"]},
    }


def encode_unit(loaded, dataset, indices, batch_size: int = 256):
    """(unit image features, labels) of `dataset[indices]` through the model's evaluation transform
    (`evaluation.features.encode_images`)."""
    from clipood_kit.data import TransformedSubset
    from clipood_kit.evaluation import features as evaluation
    out = evaluation.encode_images(loaded.model.visual, TransformedSubset(dataset, list(indices), loaded.preprocess),
                                   batch_size)
    return F.normalize(out["features"].float(), dim=-1), out["labels"]


# the embedded world's prompt-learning task: the rare style (a downstream domain pretraining saw little of)
WORLD_TASK_STYLES = ("blueprint",)
WORLD_FAR_OOD = ("glyphs", "textures")


def world_task_rows(loaded, seed: int = 0, styles: Sequence[str] = WORLD_TASK_STYLES, shots: int = 16,
                    test_per_class: int = 50, far_per_set: int = 1000,
                    schedule: CoOpSchedule = CoOpSchedule()) -> Dict:
    """`calibration_rows` on the world's prompt-learning task: `shots` images per class drawn in `styles` (seed
    1000 + seed), `test_per_class` test images (seed 2000 + seed), the world's far-OOD sets in the same styles
    (seeds 3000 + seed and 4000 + seed), the style's own template ("a blueprint of a {}.")."""
    from clipood_kit.data import WorldDataset, world
    from clipood_kit.data.far_ood import RenderedSet
    wc = world.WorldConfig(styles=world.DEFAULT_STYLES + tuple(s for s in styles if s not in world.DEFAULT_STYLES))
    chosen = torch.tensor([wc.styles.index(s) for s in styles])

    def grid(per_cell, grid_seed):
        data = WorldDataset(per_cell, grid_seed, wc)
        return encode_unit(loaded, data, torch.isin(data.domain_ids, chosen).nonzero().flatten().tolist())

    base, new = world.base_new_split(wc.classes)
    far = {name: encode_unit(loaded, data, range(len(data)))[0]
           for name, data in (("glyphs", RenderedSet("glyphs", far_per_set, 3000 + seed, list(styles), wc)),
                              ("textures", RenderedSet("textures", far_per_set, 4000 + seed, list(styles), wc)))}
    template = f"a {world.STYLES[styles[0]]} of a {{}}."
    return calibration_rows(loaded, list(wc.classes), base, new, template, grid(shots, 1000 + seed),
                            grid(test_per_class, 2000 + seed), far, schedule=schedule, seed=seed)


def dataset_task_rows(loaded, dataset, far_sets: Dict[str, object], template: str = "a photo of a {}.",
                      seed: int = 0, shots: int = 16, schedule: CoOpSchedule = CoOpSchedule(),
                      batch_size: int = 256) -> Dict:
    """`calibration_rows` on an image-folder dataset (every domain): base and new are the halves of the sorted
    classes (Dassl's `subsample_classes`: the first ceil(C/2) are base), `shots` images per class drawn with
    `seed` train CoOp, the rest are the test images; `far_sets`: name -> an OOD set (`data.far_ood`)."""
    classes = list(dataset.classes)
    if len(classes) < 2:
        raise ValueError(f"calibration needs at least 2 classes to split into base and new, got {classes}")
    if not far_sets:
        raise ValueError("calibration needs at least one far-OOD set: pass --ood-data FOLDER (an image folder)")
    half = math.ceil(len(classes) / 2)
    base, new = list(range(half)), list(range(half, len(classes)))
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(dataset.labels)
    train = []
    for c in range(len(classes)):
        members = (labels == c).nonzero().flatten()
        if len(members) <= shots:
            raise ValueError(f"class {classes[c]!r} has {len(members)} images; calibration needs more than "
                             f"{shots} (the CoOp shots) to keep test images: lower --calibration-shots")
        train += members[torch.randperm(len(members), generator=gen)[:shots]].tolist()
    test = sorted(set(range(len(dataset))) - set(train))

    far = {name: encode_unit(loaded, s, range(len(s)), batch_size)[0] for name, s in far_sets.items()}
    shots_f = encode_unit(loaded, dataset, sorted(train), batch_size)
    return calibration_rows(loaded, classes, base, new, template, shots_f, encode_unit(loaded, dataset, test, batch_size),
                            far, schedule=schedule, seed=seed)


def world_calibration(loaded, seeds: Sequence[int]) -> Dict:
    """The calibration rows of the world's prompt-learning task over `seeds` (`world_task_rows`): every seed's rows,
    their mean, which goals the mean meets, and the references."""
    return summary([world_task_rows(loaded, seed=s) for s in seeds], seeds)


def summary(runs: List[Dict], seeds: Sequence[int]) -> Dict:
    """{seeds, runs, mean, holds, references} of per-seed `calibration_rows`."""
    mean = mean_rows(runs)
    return {"seeds": list(seeds), "runs": runs, "mean": mean, "holds": holds(mean), "references": REFERENCES}


def format_rows(rows: Dict, seeds: Sequence[int]) -> str:
    """The rows (a `mean_rows` over `seeds`) beside their references and goals, as a printed table."""
    ref = REFERENCES
    verdict = holds(rows)
    lines = [f"calibration rows, mean of seeds {list(seeds)} (reference: {ref['zero_shot']['source']}; "
             f"{ref['mcm_far']['source']})",
             f"  zero-shot base / new (%)          {rows['zero_shot']['base']:.1f} / {rows['zero_shot']['new']:.1f}"
             f"   reference {ref['zero_shot']['base']:.1f} / {ref['zero_shot']['new']:.1f}   goal each in [55, 80]: "
             f"{'holds' if verdict['zero-shot base and new in [55, 80]'] else 'fails'}",
             f"  CoOp change, base / new (points)  {rows['coop_change']['base']:+.1f} / {rows['coop_change']['new']:+.1f}"
             f"   reference {ref['coop_change']['base']:+.1f} / {ref['coop_change']['new']:+.1f}   goal base >= +6: "
             f"{'holds' if verdict['CoOp: base >= +6'] else 'fails'}, new <= -3: "
             f"{'holds' if verdict['CoOp: new <= -3'] else 'fails'}"]
    far = ", ".join(f"{k} {v:.1f}" for k, v in rows["mcm_far"].items())
    refs = ", ".join(f"{k} {v:.1f}" for k, v in ref["mcm_far"].items() if k != "source")
    lines.append(f"  zero-shot MCM AUROC, far-OOD (%)  {far}   reference {refs}   goal >= 85 each: "
                 f"{'holds' if verdict['MCM far AUROC >= 85 on every set'] else 'fails'}")
    return "\n".join(lines)
