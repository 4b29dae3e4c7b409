"""Fanned-out runs (`studies.fanout`, issue 18): on 2 local worker processes (submitit) the study, the bench's seeds
and a lambda sweep give the serial run's results, in job order; a failed job names itself and its log."""
import sys
import time

import cloudpickle
import pytest

from clipood_kit.studies.fanout import Runner, fan_out

cloudpickle.register_pickle_by_value(sys.modules[__name__])     # the workers cannot import this test module


def slow_square(x: int, delay: float):
    import os
    import torch
    time.sleep(delay)
    return x * x, torch.get_num_threads(), os.getpid()


def broken(x: int):
    raise ValueError(f"bad input {x}")


def test_results_come_back_in_job_order_from_worker_processes():
    jobs = [(i, 0.6 - 0.15 * i) for i in range(4)]          # the first job finishes last
    out = fan_out(slow_square, jobs, Runner("local", workers=2, threads=1), progress=False)
    assert [o[0] for o in out] == [0, 1, 4, 9]
    assert {o[1] for o in out} == {1}                          # every job ran with the runner's threads
    import os
    assert os.getpid() not in {o[2] for o in out} and len({o[2] for o in out}) == 4    # one process per job
    serial = fan_out(slow_square, [(i, 0.0) for i in range(4)], Runner(threads=1), progress=False)
    assert [o[0] for o in serial] == [0, 1, 4, 9] and {o[2] for o in serial} == {os.getpid()}


def test_a_failed_job_names_itself_and_its_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"job \(7,\) failed \(.*bad input 7\); its log: "):
        fan_out(broken, [(7,)], Runner("local", workers=2, folder=str(tmp_path)), progress=False)


def test_a_job_with_a_config_is_named_briefly():
    """A study job's first argument is its whole config: the message names its type, not its repr."""
    from clipood_kit.studies.fanout import job_label
    from clipood_kit.studies.ood_study import StudyConfig
    assert job_label((StudyConfig(), "coop", 0)) == "(StudyConfig, 'coop', 0)"


@pytest.mark.parametrize("kwargs, message", [
    (dict(executor="ray"), "executor must be one of"),
    (dict(executor="local", workers=0), "workers must be an integer >= 1"),
    (dict(executor="serial", workers=2), "the serial executor runs one job at a time"),
    (dict(executor="local", threads=0), "threads must be"),
])
def test_bad_runners_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Runner(**kwargs)


def test_the_study_on_two_workers_equals_the_serial_study(tmp_path):
    from clipood_kit.studies.ood_study import StudyConfig, run_study, study_experiment
    from dataclasses import replace
    exp = replace(study_experiment(fast=True), cache_dir="off")
    cfg = StudyConfig(experiment=exp, methods=("zero-shot", "coop", "ce"), shots=(1, 2), seeds=(0, 1), official_budgets=False)
    serial = run_study(cfg, tmp_path / "serial", Runner(threads=1), progress=False)
    local = run_study(cfg, tmp_path / "local", Runner("local", workers=2, threads=1), progress=False)
    untimed = lambda runs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in runs]    # noqa: E731
    assert untimed(serial["runs"]) == untimed(local["runs"]) and serial["table"] == local["table"]
    assert [(r["method"], r["shots"], r["seed"]) for r in serial["runs"]] == [
        ("zero-shot", None, 0), ("zero-shot", None, 1), ("coop", 1, 0), ("coop", 2, 0), ("coop", 1, 1), ("coop", 2, 1),
        ("ce", 1, 0), ("ce", 2, 0), ("ce", 1, 1), ("ce", 2, 1)]
    assert local["runner"] == {"executor": "local", "workers": 2}
    # the runs differ where they should: shots change the training set, seeds the split and the draws
    ce = {(r["shots"], r["seed"]): r for r in serial["runs"] if r["method"] == "ce"}
    assert ce[(1, 0)]["train_images"] < ce[(2, 0)]["train_images"]
    assert ce[(1, 0)]["scores"] != ce[(1, 1)]["scores"]


def test_compare_seeds_and_a_lambda_sweep_on_two_workers_equal_serial(tmp_path):
    from clipood_kit.studies.bench import compare_bench, run_bench
    from clipood_kit.studies.sweeps import lambda_sweep
    from clipood_kit.engine.builder import apply_overrides
    from clipood_kit.methods import compose
    cfg = compare_bench(seeds=(0, 1), fast=True)
    cfg.methods = {k: v for k, v in cfg.methods.items() if k in ("ce", "clipood")}
    cfg.experiment = apply_overrides(cfg.experiment, cache_dir="off")
    serial = run_bench(cfg, tmp_path / "serial", progress=False, runner=Runner(threads=1))
    local = run_bench(cfg, tmp_path / "local", progress=False, runner=Runner("local", workers=2, threads=1))
    assert serial["per_seed"] == local["per_seed"] and serial["summary"] == local["summary"]
    assert serial["per_seed"][0] != serial["per_seed"][1]

    exp = apply_overrides(cfg.experiment, method="mms")
    a = lambda_sweep(exp, [0.0, 0.3], compose("mms"), cache=tmp_path / "c1", runner=Runner(threads=1))
    b = lambda_sweep(exp, [0.0, 0.3], compose("mms"), cache=tmp_path / "c2",
                     runner=Runner("local", workers=2, threads=1))
    assert a == b and a["points"][0]["models"] != a["points"][1]["models"]


def test_no_jobs_run_nothing_and_show_no_progress_bar(capsys):
    """Every result stored (a lesson read from the class-room store): no process, no '0/0' bar on the page."""
    assert fan_out(_boom_if_called, [], desc="lambda sweep", progress=True) == []
    assert "lambda sweep" not in capsys.readouterr().err


def _boom_if_called(*args):
    raise AssertionError("no job should run")


UMAP_THEN_THREADS = """
import numpy, torch, umap
from clipood_kit.studies.projection import fit_umap
torch.set_num_threads(1)
fit_umap(umap.UMAP(n_neighbors=5, random_state=0, n_jobs=1), numpy.random.default_rng(0).random((60, 8)))
print(torch.get_num_threads())
"""


def test_umap_leaves_torchs_thread_count_as_it_was():
    """A job held to one thread stays on one after a UMAP (`projection.fit_umap`): UMAP sets numba's threads back
    to NUMBA_NUM_THREADS when it ends, and under numba's OpenMP layer torch shares that setting (a fresh process, so
    the UMAP here is the process's first)."""
    import os
    import subprocess
    env = dict(os.environ, NUMBA_NUM_THREADS="2")          # more than the job's one, on any machine
    proc = subprocess.run([sys.executable, "-c", UMAP_THEN_THREADS], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "1"
