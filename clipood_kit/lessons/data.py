"""What the lesson notebooks train and score, computed once and kept in the result store (`clipood_kit.core.store`).

Each function takes the notebook's experiment and parameters, and returns plain data (scores, histories, score
sets, projections); the store key holds every setting and the identity of the weights and data, so a changed
parameter computes anew and an unchanged one is read back. `clipood-kit lessons prepare --cache DIR` runs every
notebook once in its default setting into DIR: with `CLIPOOD_KIT_CACHE=DIR` (read-only is enough) the lessons
then open without training anything.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch

from clipood_kit.core import store
from clipood_kit.data import DomainDataset, TransformedSubset
from clipood_kit.data.splits import Split
from clipood_kit.evaluation import features as evaluation
from clipood_kit.engine.experiment import ExperimentConfig, inputs_identity, prepare
from clipood_kit.methods import Method, compose
from clipood_kit.models.adapted import AdaptedCLIP
from clipood_kit.studies.projection import umap_projection
from clipood_kit.engine.runs import check_methods, run_method
from clipood_kit.engine.scoring import StateScorer, ood_score_sets, shift_kinds, zero_shot_scores
from clipood_kit.studies.sweeps import bma_grid, bma_over_training, record_run, trajectory_for, wise_curve


def _cached(kind: str, exp: ExperimentConfig, params: dict, compute: Callable[[], dict]) -> dict:
    payload = {"experiment": exp.to_dict(), "inputs": inputs_identity(exp), "params": params}
    return store.cached(f"lesson-{kind}", payload, compute)


def cell_images(dataset: DomainDataset, split: Split) -> dict:
    """How many evaluation images each cell (domain group x class group) is scored on: one image is 100 / n
    points of accuracy there."""
    labels, domains = dataset.labels[split.eval_idx], dataset.domain_ids[split.eval_idx]
    source = torch.isin(domains, torch.tensor(split.source_ids))
    base = torch.isin(labels, torch.tensor(split.base_ids))
    return {group: {"base": int((inside & base).sum()), "new": int((inside & ~base).sum())}
            for group, inside in (("train", source), ("unseen", ~source))}


def eval_cell_images(exp: ExperimentConfig) -> dict:
    """`cell_images` of the experiment's evaluation set (stored: reading it back builds nothing)."""
    def compute() -> dict:
        setup = prepare(exp)
        return cell_images(setup.dataset, setup.split)
    return _cached("cell-images", exp, {}, compute)


@dataclass
class ChosenImage:
    """One image of an experiment's dataset, with what the margin lesson reads about it: the experiment's zero-shot
    classifier of every class, CLIP's logit scale, and the image's normalised zero-shot feature."""

    dataset: DomainDataset
    text_features: torch.Tensor      # every class x D, normalised
    logit_scale: float
    index: int
    image: torch.Tensor              # uint8, C x H x W
    feature: torch.Tensor            # D, normalised
    label: int
    domain: str


def chosen_image(exp: ExperimentConfig, index: int) -> ChosenImage:
    """Image `index` of the experiment's dataset and its zero-shot feature (nothing trains, nothing is stored)."""
    setup = prepare(exp)
    if not 0 <= index < len(setup.dataset):
        raise ValueError(f"image index {index} is outside the dataset's {len(setup.dataset)} images")
    loaded = setup.zero_shot.loaded
    feature = evaluation.encode_images(loaded.model.visual, TransformedSubset(setup.dataset, [index],
                                                                              loaded.preprocess))["features"][0]
    image, label, domain = setup.dataset[index]
    return ChosenImage(setup.dataset, setup.zero_shot.text_features, setup.zero_shot.logit_scale, index, image, feature, int(label),
                       setup.dataset.domains[int(domain)])


def lambda_lesson(exp: ExperimentConfig, lambdas: Sequence[float], progress: bool = True) -> dict:
    """Notebook 2: `studies.sweeps.lambda_sweep` of the experiment's method over `lambdas`, with `cell_images`
    (one image's worth of accuracy per cell, the noise its curves are read against)."""
    from clipood_kit.studies.sweeps import lambda_sweep
    return {**lambda_sweep(exp, lambdas, exp.method, progress=progress), "cell_images": eval_cell_images(exp)}


def bma_lesson(exp: ExperimentConfig, grid: Sequence[float], every: int, alpha: float, beta: float,
               progress: bool = True) -> dict:
    """Notebook 3: one CLIPood run with every step kept, scored after the fact. Returns the zero-shot and last-step
    scores, `grid[i][j]` (the BMA model with Beta(grid[i], grid[j])), `over_training` (the running BMA with
    Beta(alpha, beta) and the last-step model every `every` steps) and the number of evaluation images."""
    if alpha not in grid or beta not in grid:
        raise ValueError(f"ALPHA = {alpha:g} and BETA = {beta:g} must both be values of GRID {list(grid)}: the sliders "
                         f"move over the grid; add them to GRID or pick two of its values")

    def compute() -> dict:
        setup = prepare(exp)
        run = record_run(setup, every=1, progress=progress)
        traj = run["trajectory"]
        scorer = StateScorer(setup)
        return {"zero_shot": scorer(setup.zero_shot.state), "last": run["result"]["models"]["last"],
                "grid": bma_grid(traj, scorer, grid, grid, progress=progress),
                "over_training": bma_over_training(traj, scorer, alpha, beta, every=every),
                "eval_images": len(scorer.labels), "cell_images": cell_images(setup.dataset, setup.split),
                "trajectory_mb": traj.nbytes / 1e6}
    return _cached("bma", exp, {"grid": list(grid), "every": every, "alpha": alpha, "beta": beta}, compute)


def fine_tuning_lesson(exp: ExperimentConfig, methods: Sequence[str], mixes: Sequence[float],
                       on_step: Optional[Callable[[str, dict], None]] = None) -> dict:
    """Notebook 4: each method trained once (`on_step(method, row)` sees every history row while it trains);
    returns `histories`, `scores` (zero-shot and each method's primary model) and `wise` (the WiSE-FT mix of
    the first method's last step with the zero-shot model at every mix)."""
    def compute() -> dict:
        setup = prepare(exp)
        check_methods(setup, [compose(m) for m in methods])
        ends = trajectory_for(setup.for_method(compose(methods[0])), every=exp.train.steps)   # t = 0 and T
        scores, histories = {"zero-shot": zero_shot_scores(setup)}, {}
        for i, name in enumerate(methods):
            record = ends.recorder() if i == 0 else None

            def hook(row: dict, model: AdaptedCLIP, method: Method, name=name, record=record):
                if on_step is not None:
                    on_step(name, row)
                if record is not None:
                    record(row, model, method)
            result = run_method(setup.for_method(compose(name)), progress=False, on_step=hook)
            histories[name] = result["history"]
            scores[name] = result["models"][result["primary"]]
        wise = wise_curve(ends, StateScorer(setup), mixes)
        return {"histories": histories, "scores": scores, "wise": wise, "mixes": list(mixes)}
    return _cached("fine-tuning", exp, {"methods": list(methods), "mixes": list(mixes)}, compute)


def features_lesson(exp: ExperimentConfig, points: int, seed: int = 0) -> dict:
    """Notebook 5: CE (last step) and CLIPood (BMA) trained once; the same `points` images under the zero-shot
    and both models, projected in one UMAP frame, with how far each model moved the features (overall, per
    domain group, per class) and the scale to judge it by (`projection.umap_projection`)."""
    def compute() -> dict:
        setup = prepare(exp)
        ce = run_method(setup.for_method(compose("ce")), progress=False)
        clipood = run_method(setup.for_method(compose("clipood")), progress=False)
        states = {"zero-shot": setup.zero_shot.state, "CE": ce["states"]["last"],
                  "CLIPood (BMA)": clipood["states"]["bma"]}
        return umap_projection(setup, states, points, seed=seed)
    return _cached("features", exp, {"points": points, "seed": seed}, compute)


def ood_lesson(exp: ExperimentConfig, methods: Sequence[str]) -> dict:
    """Notebook 6: `score_sets`, every OOD score of every image set (ID and each shift) after zero-shot and each
    method's primary model (`scoring.ood_score_sets`), keyed by 'zero-shot' and 'METHOD (MODEL)'; `shift_kinds`
    (each shift's kind: near, far, covariate); and the two properties of the model that explain them: its logit
    scale and the mean cosine between class text features."""
    def compute() -> dict:
        setup = prepare(exp)
        check_methods(setup, [compose(m) for m in methods])
        sets = {"zero-shot": ood_score_sets(setup, setup.zero_shot.state)}
        for name in methods:
            result = run_method(setup.for_method(compose(name)), progress=False)
            sets[f"{name} ({result['primary']})"] = ood_score_sets(setup, result["states"][result["primary"]])
        t = setup.zero_shot.text_features[setup.split.base_ids]
        cos = t @ t.T
        off = cos[~torch.eye(len(t), dtype=torch.bool)]
        return {"score_sets": sets, "shift_kinds": shift_kinds(setup), "logit_scale": setup.zero_shot.logit_scale,
                "text_cosine_mean": float(off.mean())}
    return _cached("ood", exp, {"methods": list(methods)}, compute)


def _prompt_cells(scores: dict) -> dict:
    """The numbers notebook 7 plots from one model's scores: accuracy of base and new classes (training styles),
    their harmonic mean, and MCM and max-logit AUROC on near-OOD (semantic) and far-OOD (mean over far sets)."""
    acc = scores["accuracy"]["train"]
    far = [s for s, k in scores["ood_shifts"].items() if k == "far"]
    out = {"base": acc["base"], "new": acc["new"], "H": acc["H"]}
    for score in ("MCM", "max-logit"):
        out[f"near {score}"] = scores["ood"]["semantic"][score]["AUROC"]
        out[f"far {score}"] = sum(scores["ood"][s][score]["AUROC"] for s in far) / len(far) if far else float("nan")
    return out


def prompt_lesson(exp: ExperimentConfig, shots: Sequence[int], methods: Sequence[str] = ("coop", "cocoop"),
                  nearest: int = 3, steps: Optional[int] = None) -> dict:
    """Notebook 7: CoOp and CoCoOp trained on `shots` images per base class and training style, each with its
    official budget (`studies.ood_study.BUDGETS`: epochs by shots, batch, optimiser, lr, schedule; `steps`: that
    many steps of the experiment's batch at the official lr instead, for fast runs), scored (`cells`: {method: {shots: `_prompt_cells`}},
    zero-shot under 'zero-shot'); and, for CoOp at the largest shot count, what it learned: the nearest words
    to each context vector before and after training, how far each context vector moved (1 - cos), and how far
    each class's text feature moved from CLIP's 'a photo of a CLASS.' (1 - cos), base and new classes apart."""
    from clipood_kit.studies.ood_study import BUDGETS, budget_train
    from clipood_kit.studies.prompts import learned_context

    def compute() -> dict:
        cells: dict = {m: {} for m in ("zero-shot", *methods)}
        learned = None
        for k in shots:
            setup = prepare(replace(exp, shots=int(k)))
            check_methods(setup, [compose(m) for m in methods])
            cells["zero-shot"][str(k)] = _prompt_cells(zero_shot_scores(setup))
            for m in methods:
                train = (budget_train(BUDGETS[m], setup.cfg.train, int(k)) if steps is None
                         else replace(setup.cfg.train, steps=int(steps), lr=BUDGETS[m].lr))
                result = run_method(setup.for_method(compose(m), train), progress=False)
                cells[m][str(k)] = _prompt_cells(result["models"][result["primary"]])
                if m == "coop" and k == max(shots):
                    learned = (setup, result["states"][result["primary"]])
        out = {"cells": cells, "shots": [int(k) for k in shots], "methods": list(methods),
               "cell_images": cell_images(setup.dataset, setup.split)}
        if learned is not None:
            out["context"] = learned_context(*learned, nearest=nearest)
        return out
    return _cached("prompt", exp, {"shots": [int(k) for k in shots], "methods": list(methods),
                                   "nearest": nearest, "steps": steps, "version": 3}, compute)
