"""Running a method on an experiment: train a fresh copy of the zero-shot encoder, score its models, write the
run folder; and trajectories (scores during training) for the notebooks."""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from .data import TransformedSubset
from .experiment import Setup
from .io import save_weights, write_json
from .methods import Method, MethodConfig
from .scoring import evaluate_state, headline
from .training import FineTuneOutput, TrainConfig, TrainTask, fine_tune


def build_task(setup: Setup, method: Method, train: TrainConfig) -> TrainTask:
    """The trainer's task for `method` on the setup: a fresh copy of the zero-shot encoder, the training
    images with the training transform, the frozen text features of the training classes."""
    if train.batch_per_domain is not None:
        train = replace(train, batch_size=train.batch_per_domain * len(setup.domain_pools))
    encoder = copy.deepcopy(setup.loaded.model.visual)
    encoder.load_state_dict(setup.zero_shot_state)
    label_map = torch.full((len(setup.dataset.classes),), -1, dtype=torch.long)
    label_map[torch.tensor(setup.train_class_ids)] = torch.arange(len(setup.train_class_ids))
    return TrainTask(encoder=encoder, train_set=TransformedSubset(setup.dataset, setup.train_idx),
                     domain_pools=setup.domain_pools, text_features=setup.text_features[setup.train_class_ids],
                     logit_scale=setup.logit_scale, label_map=label_map, transform=setup.loaded.train_transform(),
                     method=method, config=train)


def run_method(setup: Setup, method_cfg: MethodConfig, train_cfg: TrainConfig, run_dir: Optional[Path] = None,
               resume: bool = False, progress: bool = True, on_step: Optional[Callable] = None,
               stop_after: Optional[int] = None, accelerator=None) -> dict:
    """Fine-tune with one method; score its models; write the run when `run_dir` is given."""
    start = time.perf_counter()
    method = Method(method_cfg)
    method.prepare(setup)
    task = build_task(setup, method, train_cfg)
    train_cfg = task.config
    out: FineTuneOutput = fine_tune(task, run_dir=run_dir, resume=resume,
                                    stop_after=stop_after, progress=progress, on_step=on_step, accelerator=accelerator)
    result = {"method": method_cfg.name, "parts": method_cfg.describe(), "primary": method.primary,
              "completed": out.completed, "method_config": method_cfg.to_dict(), "train_config": asdict(train_cfg),
              "history": out.history}
    if not out.completed:
        return result
    result["models"] = {name: evaluate_state(setup, state) for name, state in out.states.items()}
    result["headline"] = headline(setup.cfg.protocol, result["models"][method.primary])
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["states"] = out.states
    if run_dir is not None:
        write_run(setup, result, Path(run_dir))
    return result


def write_run(setup: Setup, result: dict, run_dir: Path) -> None:
    """results.json, history.json and the primary and last models as full CLIP safetensors (loadable with
    `load_clip(name, pretrained=path)`)."""
    full = setup.loaded.model.state_dict()
    for name in {result["primary"], "last"}:
        state = dict(full)
        state.update({f"visual.{k}": v for k, v in result["states"][name].items()})
        save_weights(run_dir / f"model_{name.replace('@', '_')}.safetensors", state,
                     metadata={"architecture": setup.cfg.model, "method": result["method"], "model": name})
    write_json(run_dir / "history.json", result["history"])
    public = {k: v for k, v in result.items() if k not in ("states", "history")}
    write_json(run_dir / "results.json", {"setup": setup.describe(), "experiment": setup.cfg.to_dict(), **public})


def trajectory(setup: Setup, method_cfg: MethodConfig, train_cfg: TrainConfig, every: int = 10,
               eval_images: int = 800, progress: bool = False) -> dict:
    """Scores over training of the last-step model and of the method's averaged model (BMA, EMA, the WiSE-FT
    mix), every `every` steps, on a fixed seeded subset of `eval_images` evaluation images. Step 0 is the
    zero-shot model."""
    gen = torch.Generator().manual_seed(train_cfg.seed)
    subset = setup.eval_idx[torch.randperm(len(setup.eval_idx), generator=gen)[:eval_images]].sort().values
    zero = evaluate_state(setup, setup.zero_shot_state, indices=subset)
    rows = [{"step": 0, "last": zero, "average": zero}]

    def on_step(row, encoder, method):
        if row["step"] % every and row["step"] != train_cfg.steps:
            return
        state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        entry = {"step": row["step"], "last": evaluate_state(setup, state, indices=subset)}
        if method.averager is not None:
            entry["average"] = evaluate_state(setup, method.averager.average_of(state), indices=subset)
        rows.append(entry)

    result = run_method(setup, method_cfg, train_cfg, progress=progress, on_step=on_step)
    return {"rows": rows, "result": result}
