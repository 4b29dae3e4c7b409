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

ROOT = Path(__file__).resolve().parents[1]              # the repository: notebooks/, test-artifacts/

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


@pytest.fixture(scope="session")
def prepared_world():
    """A factory of prepared experiments (`engine.experiment.prepare`), one per distinct spec in a worker's session:
    `prepared_world(ExperimentConfig(per_cell=4))`. A prepared setup is shared, never modified (a method gets its
    own model: `Setup.prepare_method`, `Setup.for_method`)."""
    import json
    from clipood_kit.engine.experiment import prepare
    made = {}

    def make(spec):
        key = json.dumps(spec.to_dict(), sort_keys=True, default=str)
        if key not in made:
            made[key] = prepare(spec)
        return made[key]
    return make


# The browser tests' class-room store (every lesson in its DEFAULT setting, about 6 minutes of one core) is the
# suite's longest job. Under xdist the controller, idle otherwise, starts it in a process of its own as soon as a
# worker has collected a browser test, two lessons at a time, the longest (`LONGEST_LESSON`) first. One worker runs
# the browser tests from the start (`BROWSER_FILES`, one work unit: `BrowserTestsTogether`), each as soon as its
# lesson is stored (`classroom_lesson`): their waits for the page and the kernel leave cores to the store's build and
# the other worker, instead of idling both cores at the end (a serial run builds the store in the fixture, as before).
LONGEST_LESSON = "07_prompt_learning.ipynb"
CLASSROOM_BUILD = f"""
import json, sys, traceback
from pathlib import Path
from clipood_kit.lessons.build import prepare_store
folder, notebooks = Path(sys.argv[1]), Path(sys.argv[2])
try:
    times = prepare_store(folder / "store", notebooks, progress=False, keep=folder / "executed", workers=2,
                          first=[{LONGEST_LESSON!r}])
except BaseException:
    (folder / "failed.txt").write_text(traceback.format_exc())
    raise
(folder / "done.json").write_text(json.dumps(times))
"""
_classroom_build = {}


def classroom_folder(root: Path) -> Path:
    """Where the class-room store of a test run is built in the background (`CLASSROOM_BUILD`)."""
    return root / "classroom-background"


# The order files are handed to the two workers (`make test` keeps it: --no-loadscope-reorder): the browser tests first
# (see above), then the files that take over a minute (measured on 2 cores), longest first, then the others by their
# number of tests (most first), so the run ends on short files that the two workers share evenly; the files that read
# the fast lessons' store come after the one that builds it.
BROWSER_FILES = ("test_browser.py", "test_browser_voila.py")
LONG_FILES = ("test_lessons.py", "test_training.py", "test_fanout.py", "test_real_arch.py", "test_faults.py")
LAST = ("test_notebooks.py",)


def pytest_collection_modifyitems(session, config, items):
    """Order the files: `BROWSER_FILES`, `LONG_FILES`, the others by their number of tests (most first), `LAST`; a
    file's tests keep their order."""
    from collections import Counter
    names = [Path(str(item.fspath)).name for item in items]
    counts = Counter(names)

    def rank(name):
        for group, files in enumerate((BROWSER_FILES, LONG_FILES)):
            if name in files:
                return (group, files.index(name), name)
        return (3, 0, name) if name in LAST else (2, -counts[name], name)
    ranks = {id(item): rank(name) for item, name in zip(items, names)}
    items.sort(key=lambda item: ranks[id(item)])


class ClassroomInBackground:
    """Registered on the xdist controller only (`pytest_configure`): a run without xdist builds the store in the
    `classroom` fixture."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        """`--dist loadfile`, but the `BROWSER_FILES` are one work unit, run by one worker (`BrowserTestsTogether`)."""
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class BrowserTestsTogether(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                scope = super()._split_scope(nodeid)
                return "browser tests" if Path(scope).name in BROWSER_FILES else scope
        return BrowserTestsTogether(config, log)

    @staticmethod
    def pytest_xdist_node_collection_finished(node, ids):
        """Start the class-room store's build once, when a worker has collected a browser test."""
        if _classroom_build or not any("test_browser.py::test_" in i or "test_browser_voila.py::test_" in i
                                       for i in ids):
            return
        import subprocess
        import sys
        folder = classroom_folder(node.config._tmp_path_factory.getbasetemp())
        folder.mkdir(parents=True, exist_ok=True)
        notebooks = ROOT / "notebooks"
        env = dict(os.environ, OMP_NUM_THREADS="1")           # one core's worth, beside the two workers
        log = open(folder / "build.log", "w")
        _classroom_build["process"] = subprocess.Popen(
            [sys.executable, "-c", CLASSROOM_BUILD, str(folder), str(notebooks)], env=env, stdout=log,
            stderr=subprocess.STDOUT)
        (folder / "started").write_text(str(_classroom_build["process"].pid))


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") and not os.environ.get("PYTEST_XDIST_WORKER"):
        config.pluginmanager.register(ClassroomInBackground(), "clipood-kit-classroom-in-background")


def pytest_sessionfinish(session, exitstatus):
    """Controller: a background build still running when the session ends (browser tests deselected) is stopped;
    a finished one's lesson times are recorded."""
    import json
    process = _classroom_build.get("process")
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(timeout=30)
    if process is not None:
        done = classroom_folder(session.config._tmp_path_factory.getbasetemp()) / "done.json"
        if done.exists():
            record_timing("prepare (default setting, computing)", json.loads(done.read_text()))


ARTIFACTS = ROOT / "test-artifacts"     # screenshots and timings.json


def record_timing(key: str, values: dict) -> None:
    """Add `values` under `key` in test-artifacts/timings.json (two workers may write at once: locked, atomic)."""
    import json
    from filelock import FileLock
    from clipood_kit.core.io import write_json
    ARTIFACTS.mkdir(exist_ok=True)
    record = ARTIFACTS / "timings.json"
    with FileLock(f"{record}.lock"):
        data = json.loads(record.read_text()) if record.exists() else {}
        data.setdefault(key, {}).update(values)
        write_json(record, data)


@pytest.fixture(scope="session")
def classroom(tmp_path_factory):
    """The result store of every notebook's DEFAULT setting, prepared once per run (as a lecturer would before
    class): under xdist the controller builds it in the background (`pytest_xdist_node_collection_finished`) and
    a test waits for its lesson (`classroom_lesson`); a serial run builds it here."""
    from clipood_kit.lessons.build import prepare_store
    given = os.environ.get("CLIPOOD_KIT_CLASSROOM_STORE")     # a store `clipood-kit lessons prepare` made (soak runs)
    if given:
        return Path(given)
    background = classroom_folder(run_folder(tmp_path_factory))
    if (background / "started").exists():
        return background / "store"
    cache = tmp_path_factory.mktemp("classroom-store")
    times = prepare_store(cache, ROOT / "notebooks", progress=False, workers=2)
    record_timing("prepare (default setting, computing)", times)
    return cache


@pytest.fixture(scope="session")
def classroom_lesson(tmp_path_factory, classroom):
    """`classroom_lesson(name)` returns once lesson `name` is in the class-room store: at once for a store built in
    the fixture or given; for the background build, when it has kept the lesson's executed notebook (written after
    the lesson's every entry). A failed build fails the test with its traceback."""
    import time
    background = classroom_folder(run_folder(tmp_path_factory))
    if os.environ.get("CLIPOOD_KIT_CLASSROOM_STORE") or not (background / "started").exists():
        return lambda name: None

    def wait(name: str) -> None:
        deadline = time.time() + 1800
        while not (background / "executed" / name).exists():
            failed = background / "failed.txt"
            assert not failed.exists(), f"the class-room store's build failed:\n{failed.read_text()[-3000:]}"
            assert time.time() < deadline, f"{name} was not in the class-room store after 30 minutes: {background}"
            time.sleep(1)
    return wait
