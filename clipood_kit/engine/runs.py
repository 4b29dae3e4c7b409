"""Running an experiment: `run(spec)` prepares it and runs its method; `run_method(setup)` trains a fresh
zero-shot model with the spec's method and training config, scores its models and writes the run folder.

A run folder holds results.json (the spec that ran, exactly: `ExperimentConfig.to_dict`), history.json and, for
the method's result and the last step, the **trained state** only (`models.adapted.AdaptedCLIP`: the towers
and modules that trained), with the base weights named in its metadata; `load_clip(pretrained=FILE)` loads
it onto those weights."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from clipood_kit.data import TransformedSubset
from clipood_kit.data.splits import Split
from clipood_kit.engine.experiment import ExperimentConfig, Setup, prepare
from clipood_kit.core.schedules import dassl_steps_per_epoch
from clipood_kit.core.io import check_writable_folder, save_weights, write_json
from clipood_kit.methods import Method
from clipood_kit.models.loader import TRAINED_STATE_FORMAT, weights_digest
from clipood_kit.engine.scoring import evaluate_state, headline
from clipood_kit.engine.training import CHECKPOINTS, FineTuneOutput, TrainConfig, TrainTask, fine_tune

# fields that may change between a run and its resumption: they do not change what is computed
RESUMABLE_CHANGES = {"experiment": ("eval_batch_size", "eval_precision", "device", "cache_dir"), "train": ("checkpoint_every", "num_workers")}


def run_identity(setup: Setup) -> dict:
    """What a checkpoint must match to be resumed: the spec (less RESUMABLE_CHANGES) and the data and model
    identity."""
    exp = setup.cfg.to_dict()
    for key in ("train", *RESUMABLE_CHANGES["experiment"]):
        exp.pop(key, None)
    train_d = {k: v for k, v in asdict(setup.cfg.train).items() if k not in RESUMABLE_CHANGES["train"]}
    return {"experiment": exp, "train": train_d, "data": setup.dataset.describe(), "model": setup.zero_shot.loaded.model_id}


def _staging(run_dir: Path, what: str) -> Path:
    return run_dir.parent / f".{run_dir.name}.{what}-{os.getpid()}"


def check_run_dir(run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an unusable run folder before any work: a file, an unwritable place, a finished run (unless
    `overwrite`), checkpoints of a stopped run (unless `resume` or `overwrite`). Leftovers of an interrupted
    final write (hidden `.NAME.incoming-*` / `.NAME.old-*` folders beside it) are removed, after the old run is
    moved back when the kill came between the two renames."""
    run_dir = check_writable_folder(run_dir, "--out", "the run")
    if run_dir.parent.is_dir():
        olds = sorted(run_dir.parent.glob(f".{run_dir.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and not run_dir.exists():       # killed between the two renames: the old run is whole, restore it
            os.replace(olds.pop(), run_dir)
            print(f"restored {run_dir} from an interrupted write", flush=True)
        stale = [*olds, *run_dir.parent.glob(f".{run_dir.name}.incoming-*")]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        if stale:
            print(f"removed the leftovers of an interrupted write beside {run_dir}: "
                  f"{', '.join(p.name for p in stale)}", flush=True)
    finished = (run_dir / "results.json").exists()
    stopped = (run_dir / CHECKPOINTS).is_dir() and any((run_dir / CHECKPOINTS).iterdir())
    if finished and not overwrite:
        what = "nothing to resume; " if resume else ""
        raise FileExistsError(f"{run_dir} holds a finished run (results.json); {what}pass --overwrite to replace it "
                              f"or choose another --out")
    if stopped and not (resume or overwrite):
        raise FileExistsError(f"{run_dir} holds checkpoints of a stopped run; pass --resume to continue it or "
                              f"--overwrite to train again from step 0")
    if overwrite and not resume and (run_dir / CHECKPOINTS).exists():
        shutil.rmtree(run_dir / CHECKPOINTS)    # the old run's checkpoints must not meet the new run's


def build_task(setup: Setup, method: Method, train: Optional[TrainConfig] = None) -> TrainTask:
    """The trainer's task for `method` on the setup: the method prepared and a fresh zero-shot model of what it
    trains (`Setup.prepare_method`), the training images with the training transform, the training classes' rows
    and frozen text features."""
    label_map = torch.full((len(setup.dataset.classes),), -1, dtype=torch.long)
    label_map[torch.tensor(setup.split.train_class_ids)] = torch.arange(len(setup.split.train_class_ids))
    return TrainTask(model=setup.prepare_method(method), train_set=TransformedSubset(setup.dataset, setup.split.train_idx),
                     domain_pools=setup.split.domain_pools, text_features=setup.zero_shot.text_features[setup.split.train_class_ids],
                     class_rows=torch.tensor(setup.split.train_class_ids, dtype=torch.long), logit_scale=setup.zero_shot.logit_scale,
                     label_map=label_map, transform=setup.zero_shot.loaded.train_transform(), method=method,
                     config=train or effective_train(setup.cfg.train, setup.split))


def check_methods(setup: Setup, methods) -> None:
    """Every method's own requirements on this experiment, before any of them trains (a bench, a lesson)."""
    context = setup.method_context()
    for method in methods:
        Method(method).check(context)


def effective_train(train: TrainConfig, split: Split) -> TrainConfig:
    """The training config as it runs: `batch_per_domain` x the source domains becomes the global batch, and a
    budget in `epochs` becomes epochs x `dassl_steps_per_epoch`(training images, batch) steps."""
    if train.batch_per_domain is not None:
        train = replace(train, batch_size=train.batch_per_domain * len(split.domain_pools))
    if train.epochs is not None:
        train = replace(train, steps=train.epochs * dassl_steps_per_epoch(len(split.train_idx), train.batch_size))
    return train


NO_TRAINING = "CLIPOOD_KIT_NO_TRAINING"


def check_training_allowed(what: str) -> None:
    """Refuse to train where the server says so (`CLIPOOD_KIT_NO_TRAINING=1`, a class-room hub whose lessons read
    a prepared result store): the message says which command fills the store instead of training for every
    student."""
    if os.environ.get(NO_TRAINING, "") not in ("", "0"):
        from clipood_kit.core.store import store_dir
        raise RuntimeError(f"training {what!r} is switched off here ({NO_TRAINING} is set), and the result store "
                           f"({store_dir()}) has no entry for this setting: keep the notebook's default parameters, "
                           f"or run `clipood-kit lessons prepare --cache DIR` for them")


def run(spec: ExperimentConfig, out: Optional[Path] = None, resume: bool = False, overwrite: bool = False,
        stop_after: Optional[int] = None, progress: bool = True, on_step: Optional[Callable] = None,
        on_prepared: Optional[Callable[[Setup], None]] = None) -> dict:
    """Run an experiment spec end to end: check the run folder, prepare (data checked, weights loaded), check
    the method's requirements, train, score, write `out`. `clipood-kit finetune` is this function
    (`on_prepared` prints its summary); the same spec gives the same run, bit for bit."""
    if out is not None:
        check_run_dir(out, resume, overwrite)
    setup = prepare(spec)
    Method(spec.method).check(setup.method_context())
    if on_prepared is not None:
        on_prepared(setup)
    return run_method(setup, run_dir=out, resume=resume, stop_after=stop_after, overwrite=overwrite,
                      progress=progress, on_step=on_step, checked=True)


def run_method(setup: Setup, run_dir: Optional[Path] = None, resume: bool = False, progress: bool = True,
               on_step: Optional[Callable] = None, stop_after: Optional[int] = None, accelerator=None,
               overwrite: bool = False, checked: bool = False) -> dict:
    """Fine-tune with the spec's method and training config (`setup.cfg`; another method on the same data:
    `setup.for_method(m)`); score its models; write the run when `run_dir` is given (see `check_run_dir` for
    what a run folder may hold, `write_run` for how it is written)."""
    start = time.perf_counter()
    method_cfg = setup.cfg.method
    check_training_allowed(method_cfg.name)
    if run_dir is not None and not checked:
        check_run_dir(run_dir, resume, overwrite)
    train = effective_train(setup.cfg.train, setup.split)
    method = Method(method_cfg)
    note = method.cost_note(train.batch_size, len(setup.split.train_class_ids))
    if note:
        warnings.warn(note, stacklevel=2)
    task = build_task(setup, method, train)
    out: FineTuneOutput = fine_tune(task, run_dir=run_dir, resume=resume, stop_after=stop_after, progress=progress,
                                    on_step=on_step, accelerator=accelerator, identity=run_identity(setup))
    result = {"method": method_cfg.name, "parts": method_cfg.describe(), "primary": method.primary,
              "trains": list(method.trains) + [f"parts.{k}" for k in task.model.parts],
              "completed": out.completed, "method_config": method_cfg.to_dict(),
              "train_config": None if method.training_free else asdict(train), "history": out.history}
    if not out.completed:
        return result
    result["method_report"], result["notes"] = method.report(), method.notes()
    if method.training_free:            # recorded as not applied: nothing trained
        result["notes"].append(f"{method_cfg.name} trains nothing (its model is built from the training images): "
                               f"the training settings (steps {train.steps}, lr {train.lr:g}, batch "
                               f"{train.batch_size}) did not apply; train_config is null in results.json")
    result["models"] = {name: evaluate_state(setup, state) for name, state in out.states.items()}
    result["headline"] = headline(setup.cfg.protocol, result["models"][method.primary])
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["states"] = out.states
    if run_dir is not None and _is_main_process():
        write_run(setup, result, Path(run_dir))
    return result


def _is_main_process() -> bool:
    from accelerate import PartialState
    return PartialState().is_main_process


def write_run(setup: Setup, result: dict, run_dir: Path) -> None:
    """results.json, history.json and the primary and last models as full CLIP safetensors (loadable with
    `load_clip(name, pretrained=path)`), written as one unit: into a hidden staging folder beside the run,
    which then replaces the run folder (the old folder, with the finished run's checkpoints, is renamed away
    first and deleted). A kill at any point leaves the old run or the new one, never old files beside new ones;
    a failure removes the staging folder."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging, old = _staging(run_dir, "incoming"), _staging(run_dir, "old")
    shutil.rmtree(staging, ignore_errors=True)
    with _terminate_as_exception():
        _write_staged(setup, result, run_dir, staging, old)


@contextlib.contextmanager
def _terminate_as_exception():
    """While the run is written, SIGTERM (a scheduler's cancel, a plain `kill`) raises SystemExit, so the staging
    folder is removed as on any failure. SIGKILL cannot be caught: the next run into the folder cleans up and
    says what it removed (`check_run_dir`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def trained_state_metadata(setup: Setup, method: str, model: str) -> dict:
    """What a saved trained state needs to be loaded (`models.loader.load_clip`): the architecture and the
    base weights it was trained from (a tag, or a file) with their digest, which loading compares."""
    return {"format": TRAINED_STATE_FORMAT, "architecture": setup.cfg.model,
            "base": str(setup.cfg.pretrained) if setup.cfg.pretrained is not None else "none",
            "base_digest": weights_digest(setup.cfg.model, setup.cfg.pretrained),
            "base_id": setup.zero_shot.loaded.model_id, "method": method, "model": model}


def _write_staged(setup: Setup, result: dict, run_dir: Path, staging: Path, old: Path) -> None:
    try:
        staging.mkdir()
        for name in sorted({result["primary"], "last"}):
            save_weights(staging / f"model_{name.replace('@', '_')}.safetensors", result["states"][name],
                         metadata=trained_state_metadata(setup, result["method"], name))
        write_json(staging / "history.json", result["history"])
        public = {k: v for k, v in result.items() if k not in ("states", "history")}
        write_json(staging / "results.json", {"setup": setup.describe(), "experiment": setup.cfg.to_dict(), **public})
        if run_dir.exists():
            os.replace(run_dir, old)
        os.replace(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not run_dir.exists():
            os.replace(old, run_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
