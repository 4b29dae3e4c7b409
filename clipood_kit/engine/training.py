"""Fine-tuning loop on HF Accelerate (one CPU, one GPU, many GPUs).

- The model is `models.adapted.AdaptedCLIP`: what trains is what the method's parts declare (the image tower,
  the text tower, their own modules: heads, prompt context, adapters). With a frozen text side, the class text
  features are computed once (CLIPood's classifier). The model and every part's own training module go through
  `accelerator.prepare`, so under k processes DDP averages every gradient.
- AdamW (weight decay 0.1), cosine learning rate per step without warm-up (the official code's schedule); or, for
  the CoOp family, Dassl's SGD and per-epoch schedule with a budget in epochs (`TrainConfig.epochs`).
- Batches are balanced over the source domains: every step draws batch_size / n_domains images from each
  domain with replacement (DomainBed's sampler). The global batch of step t is a function of (seed, t) alone,
  and each image's augmentation has its own seed, so a resumed run and a run on k processes see exactly the
  batches of an uninterrupted single-process run; process r takes every k-th image of the global batch.
- Mixed precision (bf16/fp16) only in forward/backward; master weights and averages stay fp32.
- BatchNorm layers (ResNet towers) keep their pretrained statistics: they run in inference mode, so
  k processes compute what one process does, and averaged weights never meet mismatched statistics.
- Checkpoints: `accelerator.save_state` (model, optimiser, RNG) plus the method's state (BMA average) as
  safetensors and the step and history as JSON, written into a temporary folder renamed into place.
  The method state is not registered with `register_for_checkpointing`, because Accelerate loads such
  objects with `weights_only=False`; ours are read with safetensors and json.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from clipood_kit.core.io import load_weights, save_weights, write_json
from clipood_kit.methods import Batch, Method, RunContext
from clipood_kit.core.schedules import cosine_lr, dassl_epoch_lr

CHECKPOINTS = "checkpoints"
SCHEDULES = ("cosine", "dassl")
OPTIMIZERS = ("adamw", "sgd")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops before the weights are touched."""


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 36               # global batch, over all processes
    batch_per_domain: Optional[int] = None   # set: the global batch is this x the source domains (DomainBed, CLIPood)
    lr: float = 1e-5
    weight_decay: float = 0.1
    precision: str = "no"              # "no", "bf16" or "fp16" (autocast; fp32 master weights)
    seed: int = 0
    checkpoint_every: int = 0          # steps between checkpoints; 0: only when stopped early
    num_workers: Optional[int] = None   # loader worker processes; None: min(8, cores) on CUDA, 0 on a CPU (loader_options)
    # The CoOp family's official trainer (Dassl) counts its budget in epochs, steps its lr once per epoch and uses
    # SGD: `epochs` set makes the run epochs x dassl_steps_per_epoch(training images, batch_size) steps (replacing
    # `steps`, by `runs.effective_train`); schedule "dassl" is `core.schedules.dassl_epoch_lr` (needs `epochs`), "cosine"
    # CLIPood's per-step cosine; optimizer "sgd" is SGD with `momentum` (Dassl's OPTIM defaults), "adamw" AdamW.
    epochs: Optional[int] = None
    schedule: str = "cosine"
    warmup_epochs: int = 1             # schedule "dassl": epochs at the constant warmup_lr first
    warmup_lr: float = 1e-5
    optimizer: str = "adamw"
    momentum: float = 0.9              # optimizer "sgd"

    def validate(self, num_processes: int = 1) -> None:
        if self.batch_per_domain is not None and self.batch_per_domain < 1:
            raise ValueError(f"batch_per_domain must be >= 1 or None, got {self.batch_per_domain}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.batch_size % num_processes:
            raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of the number of "
                             f"processes ({num_processes})")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {self.precision!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None (a budget in steps), got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "dassl" and self.epochs is None:
            raise ValueError("schedule 'dassl' steps its lr once per epoch: set epochs (the budget) too")
        if self.warmup_epochs < 0 or (self.epochs is not None and self.warmup_epochs >= self.epochs):
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The lr of step `step` (from 0): CLIPood's per-step cosine, or Dassl's per-epoch schedule (epoch = step //
    (steps / epochs))."""
    if cfg.schedule == "dassl":
        if cfg.steps % cfg.epochs:
            raise ValueError(f"steps ({cfg.steps}) must be epochs ({cfg.epochs}) x the steps of an epoch: a budget in "
                             f"epochs is turned into steps by runs.effective_train")
        return dassl_epoch_lr(step // (cfg.steps // cfg.epochs), cfg.epochs, cfg.lr, cfg.warmup_lr, cfg.warmup_epochs)
    return cosine_lr(step, cfg.steps, cfg.lr)


class AugmentedView(Dataset):
    """Items addressed by (index, augmentation seed): the transform runs under its own seed, so the same
    pair gives the same tensor in any process, worker or resumed run."""

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        image, label, domain = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every accelerator backend, lazily, recording a
            # stack trace each time (0.7 ms per image on the tiny model, a third of a training step)
            torch.default_generator.manual_seed(seed)
            image = self.transform(image)
        return image, label, domain


def global_batch(step: int, seed: int, domain_pools: Sequence[torch.Tensor], batch_size: int) -> List[Tuple[int, int]]:
    """The (index, augmentation seed) pairs of step `step`: batch_size / D draws with replacement from each of
    the D domain pools (the first batch_size % D pools give one more)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    per, extra = divmod(batch_size, len(domain_pools))
    out = []
    for d, pool in enumerate(domain_pools):
        n = per + (1 if d < extra else 0)
        picks = pool[torch.randint(len(pool), (n,), generator=gen)]
        seeds = torch.randint(2**31 - 1, (n,), generator=gen)
        out.extend(zip(picks.tolist(), seeds.tolist()))
    return out


class StepBatches:
    """Batch sampler for DataLoader: this process's share of every global batch from `start` on."""

    def __init__(self, cfg: TrainConfig, domain_pools, start: int, rank: int, world: int):
        self.cfg, self.pools, self.start, self.rank, self.world = cfg, domain_pools, start, rank, world

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.cfg.steps):
            yield global_batch(step, self.cfg.seed, self.pools, self.cfg.batch_size)[self.rank::self.world]


def freeze_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _flatten(state: dict, prefix: str = "") -> Tuple[Dict[str, torch.Tensor], dict]:
    """Split a nested state into tensors (flat keys 'a/b/c') and the JSON-ready rest (nested as given)."""
    tensors, rest = {}, {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            tensors[prefix + k] = v
        elif isinstance(v, dict):
            t, r = _flatten(v, f"{prefix}{k}/")
            tensors.update(t)
            if r:
                rest[k] = r
        else:
            rest[k] = v
    return tensors, rest


def _unflatten(tensors: Dict[str, torch.Tensor], rest: dict) -> dict:
    state = json.loads(json.dumps(rest))
    for key, t in tensors.items():
        *outer, inner = key.split("/")
        node = state
        for part in outer:
            node = node.setdefault(part, {})
        node[inner] = t
    return state


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))
    return done[-1] if done else None


def _flat_items(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_differences(saved: dict, current: dict) -> List[str]:
    """'field: saved -> now' for every field of two run identities that differs (nested keys dotted)."""
    a, b = _flat_items(saved), _flat_items(json.loads(json.dumps(current)))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def _read_checkpoint(accelerator: Accelerator, ckpt: Path, method: Method, identity: Optional[dict]):
    """(step, history) of a checkpoint after loading it into the model, optimiser and method; refuses a checkpoint
    whose run identity differs from this run's, and turns a damaged one into a one-line error."""
    meta_path = ckpt / "trainer_state.json"
    try:
        meta = json.loads(meta_path.read_text())
        step, history = int(meta["step"]), list(meta["history"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {ckpt} is damaged ({meta_path.name}: {type(e).__name__}: {e}); delete "
                         f"{ckpt.parent} to start again, or run with --overwrite") from None
    if identity is not None:
        diffs = identity_differences(meta.get("identity", {}), identity)
        if diffs:
            raise ValueError(f"cannot resume from {ckpt}: this run differs from the checkpoint's in {len(diffs)} "
                             f"field(s): {'; '.join(diffs)}. Resume with the original settings, or train afresh "
                             f"with --overwrite (or another --out)")
    try:
        accelerator.load_state(str(ckpt))
        method.load_state_dict(_unflatten(load_weights(ckpt / "method_state.safetensors"), meta["method_state"]))
    except Exception as e:          # noqa: BLE001 - any failure to read a checkpoint is the same user error
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {reason}); delete {ckpt.parent} "
                         f"to start again, or run with --overwrite") from None
    return step, history


def _save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, method: Method, history: List[dict],
                     identity: Optional[dict] = None) -> Path:
    folder = Path(run_dir) / CHECKPOINTS
    final, tmp = folder / f"step_{step:06d}", folder / f".tmp_step_{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        tensors, rest = _flatten(method.state_dict())
        save_weights(tmp / "method_state.safetensors", tensors)
        write_json(tmp / "trainer_state.json", {"step": step, "identity": identity, "history": history,
                                                "method_state": rest})
        for old in folder.iterdir():            # keep only the newest checkpoint
            if old.name.startswith("step_"):
                shutil.rmtree(old)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def loader_options(num_workers: Optional[int], device: torch.device) -> dict:
    """DataLoader settings that feed the device: on CUDA min(8, cores) workers by default, pinned memory and
    persistent workers; on a CPU no workers by default, since they would take the cores the training step uses
    (benchmarks/loader_throughput.py). Every image keeps its own augmentation seed, so the batches are the same
    with any number of workers, processes or resumptions."""
    cuda = torch.device(device).type == "cuda"
    workers = num_workers if num_workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    return {"num_workers": workers, "pin_memory": cuda, "persistent_workers": cuda and workers > 0}


@dataclass
class TrainTask:
    """What one fine-tuning run needs: the model, the data, the method and the training config.

    `domain_pools` hold the train_set indices of each source domain; `class_rows` are the training classes' rows
    of the model's class features, `text_features` their frozen zero-shot features (the parts' reference);
    `label_map` maps dataset labels to those rows. `runs.build_task(setup, method)` builds one.
    """

    model: torch.nn.Module                       # models.adapted.AdaptedCLIP
    train_set: Dataset
    domain_pools: Sequence[torch.Tensor]
    text_features: torch.Tensor
    class_rows: torch.Tensor
    logit_scale: float
    label_map: torch.Tensor
    transform: Callable
    method: Method
    config: TrainConfig


@dataclass
class FineTuneOutput:
    states: Dict[str, Dict[str, torch.Tensor]]   # evaluated model states by name ("last", "bma", ...)
    history: List[dict]
    completed: bool                              # False when stopped early by `stop_after`


def _floats(metrics: dict) -> Dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def accelerator_settings(device: torch.device, precision: str, every_parameter_every_step: bool = True) -> dict:
    """The Accelerator's settings for a model that the experiment put on `device`: the CPU when the experiment
    chose it (`--device cpu` trains on the CPU even where a GPU is present), else the accelerator; a CUDA index
    (`cuda:1`) becomes the current CUDA device, which a one-process Accelerator uses. A method whose steps leave
    some trained parameters without a gradient (LP-FT's probe, OGEN's warm-up) has DDP look for them."""
    from accelerate.utils import DistributedDataParallelKwargs
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    handlers = [] if every_parameter_every_step else [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return {"cpu": device.type == "cpu", "mixed_precision": precision, "kwargs_handlers": handlers}


def fine_tune(task: TrainTask, run_dir: Optional[Path] = None, resume: bool = False,
              stop_after: Optional[int] = None, accelerator: Optional[Accelerator] = None,
              progress: bool = True, on_step: Optional[Callable] = None,
              identity: Optional[dict] = None) -> FineTuneOutput:
    """Fine-tune `task.model` on `task.train_set` with `task.method`.

    Checkpoints record `identity` (JSON: the full experiment, method and training config, data and model
    identity; `runs.run_identity`); `resume` refuses a checkpoint whose identity differs and names each field.

    `on_step(row, model, method)` is called on the main process after every step with the history row, the
    (unwrapped) model and the method (live plots, trajectories). No global RNG is seeded or drawn from:
    batches and augmentations are functions of (seed, step), the parts draw from their own seeded generators.
    """
    cfg, method, model = task.config, task.method, task.model
    accelerator = accelerator or Accelerator(**accelerator_settings(next(model.parameters()).device, cfg.precision,
                                                                    method.every_parameter_every_step))
    cfg.validate(accelerator.num_processes)
    if (resume or stop_after is not None or cfg.checkpoint_every) and run_dir is None:
        raise ValueError("checkpoints need a run_dir")
    device = accelerator.device
    zero_shot = model.trained_state()
    dtype = next(model.visual.parameters()).dtype     # fp32 (or fp64 for exact numerical checks)
    text_features = task.text_features.to(device, dtype=torch.promote_types(dtype, torch.float32))
    rows, label_map = task.class_rows.to(device), task.label_map.to(device)
    method.setup(RunContext(model, text_features, task.logit_scale, cfg.steps, cfg.seed, device, rows,
                            accelerator.process_index, accelerator.num_processes))
    if method.training_free:                          # built, not trained (training-free Tip-Adapter)
        return FineTuneOutput(method.final_states(zero_shot, zero_shot), [], completed=True)

    own = method.training_modules()                   # (part, attribute, module): OGEN's generator
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    groups += [{"params": [p for p in m.parameters() if p.requires_grad], "lr_scale": part.lr_scale}
               for part, _, m in own]
    if not any(g["params"] for g in groups):
        raise ValueError(f"method {method.name!r} trains nothing: none of its parts declares a tower it trains "
                         f"(PartConfig.trains, e.g. ('image',)) or a module of its own")
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    freeze_batchnorm(model)
    wrapped, *prepared, optimizer = accelerator.prepare(model, *[m for _, _, m in own], optimizer)
    for (part, name, _), module in zip(own, prepared):
        setattr(part, name, module)                   # the part calls the prepared (DDP-wrapped) module
    unwrapped = accelerator.unwrap_model(wrapped)

    start, history = 0, []
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            if accelerator.is_main_process:
                print(f"--resume: no checkpoint in {Path(run_dir) / CHECKPOINTS}; training from step 0", flush=True)
        else:
            start, history = _read_checkpoint(accelerator, ckpt, method, identity)

    view = AugmentedView(task.train_set, task.transform)
    loader = DataLoader(view, batch_sampler=StepBatches(cfg, task.domain_pools, start, accelerator.process_index,
                                                          accelerator.num_processes),
                        **loader_options(cfg.num_workers, device))
    bar = tqdm(total=cfg.steps, initial=start, desc=f"fine-tune {method.name}",
               disable=not (progress and accelerator.is_local_main_process))
    step = start
    for images, labels, _ in loader:
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        images, labels = images.to(device, dtype=dtype), label_map[labels.to(device)]
        with accelerator.autocast():
            features, classes = wrapped(images)          # classes: C x D class features, or N x C cosines
        classes = classes.to(text_features.dtype)
        batch = (Batch(step, features.to(text_features.dtype), labels, images, cosines=classes[:, rows])
                 if unwrapped.adapts_cosines else
                 Batch(step, features.to(text_features.dtype), labels, images, classes[rows], every_class_features=classes))
        loss, metrics = method.loss(batch)
        # the mean over processes: one NaN anywhere makes it NaN, so every process stops at the same step (a
        # check on the local loss alone would stop one process and leave the others waiting in backward)
        mean_loss = accelerator.reduce(loss.detach(), "mean")
        if not torch.isfinite(mean_loss):
            bar.close()
            raise NonFiniteLossError(
                f"step {step + 1}: the loss is {mean_loss.item()} (not finite), so training stopped and no results "
                f"were written; likely cause: a learning rate too large for this model (lr={cfg.lr:g}, a previous "
                f"step diverged) or a method hyperparameter out of range; lower --lr and run again")
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        row = {"step": step, "loss": mean_loss.item(), "lr": lr}
        row.update(_floats(metrics))
        row.update(_floats(method.after_step(unwrapped)))
        history.append(row)
        if on_step is not None and accelerator.is_main_process:
            on_step(row, unwrapped, method)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        stopping = stop_after is not None and step >= stop_after and step < cfg.steps
        if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps):
            _save_checkpoint(accelerator, run_dir, step, method, history, identity)
        if stopping:
            bar.close()
            return FineTuneOutput({}, history, completed=False)
    bar.close()
    last = unwrapped.trained_state()
    return FineTuneOutput(method.final_states(zero_shot, last), history, completed=True)
