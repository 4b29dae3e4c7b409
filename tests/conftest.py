"""Shared fixtures. The suite runs offline: open_clip's hub downloads fail at once instead of retrying.

`make test` runs on two pytest-xdist workers (`-n 2 --dist loadfile`: a file's tests stay on one worker, so its
module fixtures run once); each worker and the notebook kernels it starts use one thread. Tests that compare runs
bit for bit across processes compare fresh processes (a long-lived worker's earlier work once changed a last bit
of its in-process run)."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"          # inherited by papermill's and JupyterLab's kernels
# sweeps cache their points on disk: the suite uses a fresh cache of its own (inherited by notebook kernels)
os.environ["CLIPOOD_KIT_CACHE"] = __import__("tempfile").mkdtemp(prefix="clipood-kit-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny():
    """The shipped tiny CLIP (model, tokenizer, preprocess)."""
    from clipood_kit.models import load_clip
    return load_clip()


@pytest.fixture(scope="session")
def world_tree(tmp_path_factory):
    """The world exported as a small DomainBed-style folder (3 images per style x class)."""
    from clipood_kit.data import export_world
    return export_world(tmp_path_factory.mktemp("export") / "world", per_cell=3, seed=5)


# Lessons: every notebook in its fast setting runs once per test run (under xdist, the first worker to need it
# prepares it and the other waits for it), into a store of its own, and the tests that read an executed notebook
# or the store share it (test_notebooks.py, test_lessons.py).


def run_folder(tmp_path_factory) -> Path:
    """A folder every xdist worker of this test run shares (the base temp's parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def fast_lessons(tmp_path_factory):
    """(the result store, the folder of executed notebooks): every lesson run once in its fast setting
    (`test_notebooks.FAST`) by `lessons.build.prepare_store`, into a store of the run's own."""
    import json
    import shutil
    from filelock import FileLock
    from clipood_kit.lessons.build import prepare_store
    from test_notebooks import FAST, NOTEBOOKS
    root = run_folder(tmp_path_factory) / "fast-lessons"
    store, executed, done = root / "store", root / "executed", root / "done.json"
    with FileLock(f"{root}.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)        # what a worker that died half-way left
            times = prepare_store(store, NOTEBOOKS, parameters=FAST, progress=False, keep=executed, workers=2)
            assert sorted(times) == sorted(FAST)
            done.write_text(json.dumps(times))
    return store, executed
