"""Independent runs fanned out: serially in this process (the default), on worker processes of this machine, or on
a Slurm cluster, through submitit (github.com/facebookincubator/submitit).

Why submitit rather than Ray: the runs of a study, a sweep or `compare --seeds` share nothing while they run, so
they need no object store, actors or scheduler daemon, only "run this function there and bring its result back".
submitit does that with one small pure-Python package: locally it starts each job as a subprocess (its
`LocalExecutor`), on a cluster it submits the same pickled job to Slurm (`AutoExecutor`), which is the scheduler
most academic clusters run; results come back as files in one folder, which survives a lost session.

    results = fan_out(fn, jobs, Runner("local", workers=2))     # == [fn(*job) for job in jobs]

Results equal the serial ones (tests/test_fanout.py): every job sets the same number of torch threads (`threads`)
before it runs, since a CPU matrix product may sum in another order with another thread count, and every random
draw of a run comes from its own seed. Results come back in job order, whatever order the jobs finish in.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tqdm.auto import tqdm

EXECUTORS = ("serial", "local", "slurm")


@dataclass
class Runner:
    """How to run independent jobs: `executor` one of EXECUTORS; `workers` jobs at once (local: processes; slurm:
    the array's parallelism); `threads` torch threads per job (None: the cores divided among the workers);
    `folder` submitit's job folder (None: a temporary folder, removed afterwards); `slurm` submitit's Slurm
    parameters (`slurm_partition`, `gpus_per_node`, `cpus_per_task`, ...); `timeout_min` per job."""

    executor: str = "serial"
    workers: int = 1
    threads: Optional[int] = None
    folder: Optional[str] = None
    slurm: Dict[str, Any] = field(default_factory=dict)
    timeout_min: float = 24 * 60

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {self.threads!r}")
        if self.executor == "serial" and self.workers != 1:
            raise ValueError("the serial executor runs one job at a time; pass --executor local (or slurm) to use "
                             f"{self.workers} workers")

    def job_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        if self.executor == "serial":
            import torch
            return torch.get_num_threads()
        return max(1, (os.cpu_count() or 1) // self.workers)


def _run_job(fn: Callable, args: tuple, threads: int):
    """One job in whatever process runs it: torch's thread count fixed first (the module docstring)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def fan_out(fn: Callable, jobs: Sequence[tuple], runner: Runner = Runner(), desc: str = "runs",
            progress: bool = True) -> List[Any]:
    """[fn(*job) for job in jobs], run as `runner` says; results in job order. `fn` must be a module-level
    function (jobs are pickled to other processes). A failed job raises, naming the job and its log."""
    jobs = [tuple(j) for j in jobs]
    if not jobs:                          # nothing to run (every result stored): no process, no empty progress bar
        return []
    threads = runner.job_threads()
    if runner.executor == "serial":
        return [_run_job(fn, job, threads) for job in tqdm(jobs, desc=desc, disable=not progress)]
    import submitit
    folder = Path(runner.folder) if runner.folder else Path(tempfile.mkdtemp(prefix="clipood-kit-jobs-"))
    if runner.executor == "local":
        results = _local(fn, jobs, runner, threads, folder, desc, progress)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(timeout_min=runner.timeout_min, slurm_array_parallelism=runner.workers,
                                   **runner.slurm)
        submitted = executor.map_array(_run_job, [fn] * len(jobs), [j for j in jobs], [threads] * len(jobs))
        results = [_result(job, args) for job, args in zip(tqdm(submitted, desc=desc, disable=not progress), jobs)]
    if not runner.folder:                 # a temporary folder goes once every job succeeded (a failure keeps its log)
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _local(fn, jobs, runner: Runner, threads: int, folder: Path, desc: str, progress: bool) -> List[Any]:
    """At most `runner.workers` jobs at once on this machine (submitit's LocalExecutor starts each one at once)."""
    import submitit
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=runner.timeout_min)
    results: List[Any] = [None] * len(jobs)
    running: Dict[int, Any] = {}
    waiting = list(range(len(jobs)))
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    try:
        while waiting or running:
            while waiting and len(running) < runner.workers:
                i = waiting.pop(0)
                running[i] = executor.submit(_run_job, fn, jobs[i], threads)
            finished = [i for i, job in running.items() if job.done()]
            for i in finished:
                results[i] = _result(running.pop(i), jobs[i])
                bar.update(1)
            if not finished:
                time.sleep(0.2)
    finally:
        for job in running.values():
            job.cancel(check=False)
        bar.close()
    return results


class JobFailed(RuntimeError):
    """A fanned-out job failed or was killed; the message names the job briefly, its log and its last error line."""


def job_label(args: tuple) -> str:
    """A short name for a job: its plain arguments as they are, a config by its type (a repr of a whole
    StudyConfig is thousands of characters)."""
    parts = []
    for a in args:
        text = repr(a) if isinstance(a, (str, int, float, bool, type(None))) else type(a).__name__
        parts.append(text if len(text) <= 40 else text[:37] + "...")
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _result(job, args: tuple):
    try:
        return job.result()
    except Exception as e:       # noqa: BLE001 - submitit wraps the job's own error; name the job and its log
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
        last = (errors or lines or [type(e).__name__])[-1][:300]       # the job's own error, else submitit's word
        raise JobFailed(f"job {job_label(args)} failed ({type(e).__name__}: {last}); its log: "
                        f"{job.paths.stderr}") from None
