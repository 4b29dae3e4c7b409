"""Building what a course hands out from the instructor notebooks in `notebooks/`.

- **Student versions** (`student_versions`): the notebooks are otter-grader assignments (a raw
  `# ASSIGNMENT CONFIG` cell, `# BEGIN QUESTION` blocks with solutions and tests). `otter assign` strips the
  solutions (`# SOLUTION` lines become `...`), keeps the visible checks as `grader.check("name")` cells that run in
  the student's own notebook, and keeps hidden tests for the autograder version only.
- **Apps** (`app_versions`): what Voila serves in a lecture: the implement-and-check exercises (each otter
  `# BEGIN QUESTION` ... `# END QUESTION` block) and the raw cells removed; prose, predictions (widgets whose
  reveal waits for its button, `lessons.predict`), sliders and figures kept. Their metadata names the Voila
  template `clipood` (`install_voila_template` puts it where Voila looks), whose widget views wait for their model.
- **The class-room store** (`prepare_store`): every notebook run once in its default setting (papermill) with
  `CLIPOOD_KIT_CACHE` pointing at the store, so everything the lessons train is computed once; students whose
  `CLIPOOD_KIT_CACHE` points there (read-only is enough) open every notebook without training.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from clipood_kit.core.io import check_writable_folder, write_text


class LessonFailed(RuntimeError):
    """A lesson notebook raised while the store was prepared; the message names the notebook, cell and error."""


def default_notebooks() -> Path:
    """The repository's `notebooks/` beside the package (an editable install), where the lessons live."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def _notebooks(folder: Optional[Path]) -> List[Path]:
    folder = Path(folder) if folder is not None else default_notebooks()
    found = sorted(folder.glob("[0-9]*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no lesson notebooks (NN_name.ipynb) in {folder}: pass --notebooks DIR, the "
                                f"repository's notebooks/ folder")
    return found


# `otter assign` for every notebook in one Python process: otter's import is most of one assignment's time (about
# 2.5 of 3 s), so one process, not one per notebook. A process of its own all the same: otter changes the working
# directory while it assigns.
_ASSIGN = """
import sys
from pathlib import Path
from otter.assign import main as assign
staging, lessons = Path(sys.argv[1]), sys.argv[2:]
for nb in lessons:
    try:
        assign(nb, str(staging / Path(nb).stem))
    except BaseException as e:
        print(f"FAILED {Path(nb).name}\\t{type(e).__name__}: {e}".replace("\\n", " "), file=sys.stderr)
        sys.exit(1)
"""


def _otter_assign(lessons: List[Path], staging: Path, out: Path) -> None:
    """Run `otter assign NOTEBOOK staging/STEM` for every lesson (`_ASSIGN`); the first failure raises, naming its
    notebook and otter's message."""
    proc = subprocess.run([sys.executable, "-c", _ASSIGN, str(staging), *map(str, lessons)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        failed = [line[len("FAILED "):] for line in proc.stderr.splitlines() if line.startswith("FAILED ")]
        name, message = failed[-1].split("\t", 1) if failed else ("a notebook", proc.stderr.strip()[-300:])
        raise ValueError(f"otter assign failed on {name}: {message or 'no message'}; fix its assignment config or "
                         f"questions (nothing was written to {out})")


def student_versions(out: Path, notebooks: Optional[Path] = None, autograder: bool = False,
                     overwrite: bool = False) -> List[Path]:
    """`out/NAME.ipynb` for every lesson: solutions stripped, checks kept (and `out/autograder/NAME.ipynb`, with
    solutions and hidden tests, when `autograder`). Returns the student notebooks' paths.

    All or none: every notebook is assigned into a staging folder first, and only when all succeeded are they
    moved into `out`. A notebook already in `out` that differs from the new one (a lecturer's edits) is replaced
    only with `overwrite`."""
    if importlib.util.find_spec("otter") is None:
        raise FileNotFoundError("otter-grader is not installed in this environment: pip install -e '.[notebooks]'")
    out = check_writable_folder(out, "--out", "the student notebooks")
    lessons = _notebooks(notebooks)
    with tempfile.TemporaryDirectory(prefix="clipood-kit-assign-") as staging:
        _otter_assign(lessons, Path(staging), out)
        made: List[tuple] = []                      # (staged file, target)
        for nb in lessons:
            tmp = Path(staging) / nb.stem
            made.append((tmp / "student" / nb.name, out / nb.name))
            if autograder:
                made.append((tmp / "autograder" / nb.name, out / "autograder" / nb.name))
        changed = [t for src, t in made if t.exists() and not _same_notebook(t, src)]
        if changed and not overwrite:
            raise FileExistsError(f"{out} already holds {len(changed)} notebook(s) that differ from the new ones "
                                  f"({', '.join(str(t.relative_to(out)) for t in changed[:4])}): edits would be lost; "
                                  f"pass --overwrite to replace them or choose another --out")
        for src, target in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp_target = target.parent / f".{target.name}.incoming"
            shutil.copyfile(src, tmp_target)
            os.replace(tmp_target, target)
    return [t for _, t in made if t.parent == out]


APP_LESSONS = ("02_margins.ipynb", "03_beta_moving_average.ipynb", "04_fine_tuning.ipynb", "06_ood_detection.ipynb")
"""The lessons built around a control (a slider or a dropdown) that a lecturer serves as apps."""


VOILA_TEMPLATE = "clipood"   # clipood_kit/lessons/voila_template, installed by install_voila_template


def install_voila_template(data_dirs: Optional[List[Path]] = None) -> Path:
    """Copy the template `VOILA_TEMPLATE` (this package's `lessons/voila_template`) to
    `DATA/voila/templates/clipood` for the first writable DATA of `data_dirs` (default: the environment's
    `sys.prefix/share/jupyter`, then the user's Jupyter data folder; Voila searches both), each file atomically
    (`core.io.write_text`), and return the folder. The app notebooks name this template; Voila fails on an unknown one."""
    if data_dirs is None:
        from jupyter_core.paths import ENV_JUPYTER_PATH, jupyter_data_dir
        data_dirs = [Path(ENV_JUPYTER_PATH[0]), Path(jupyter_data_dir())]
    source = Path(__file__).parent / "voila_template"
    problems = []
    for data in data_dirs:
        target = Path(data) / "voila" / "templates" / VOILA_TEMPLATE
        try:
            for item in sorted(source.iterdir()):
                write_text(target / item.name, item.read_text())
            return target
        except OSError as error:
            problems.append(f"{target}: {error}")
    raise PermissionError("cannot install the Voila template of the apps: " + "; ".join(problems)
                          + ". Make one of these folders writable, or set JUPYTER_DATA_DIR to a writable folder")


def app_notebook(nb: dict) -> dict:
    """A lesson as an app: every cell of an otter question block (the implement-and-check exercises: their task,
    solution and tests) and every raw cell removed; its metadata names the Voila template `VOILA_TEMPLATE`, whose
    widget views wait for their model (Voila's own fail on busy cores with "model not found")."""
    cells, inside = [], False
    for cell in nb["cells"]:
        text = "".join(cell.get("source", ""))
        if cell["cell_type"] == "raw":
            if "BEGIN QUESTION" in text:
                inside = True
            elif "END QUESTION" in text:
                inside = False
            continue
        if not inside:
            cells.append(cell)
    if inside:
        raise ValueError("a '# BEGIN QUESTION' raw cell has no '# END QUESTION' after it: close the question")
    return {**nb, "cells": cells, "metadata": {**nb.get("metadata", {}), "voila": {"template": VOILA_TEMPLATE}}}


def app_versions(out: Path, notebooks: Optional[Path] = None, names=APP_LESSONS, overwrite: bool = False) -> List[Path]:
    """`out/NAME.ipynb` (`app_notebook`) for each lesson of `names`, written atomically, and the Voila template they
    name (`install_voila_template`); serve one with `voila out/NAME.ipynb`. A file in `out` that differs from the
    new one is replaced only with `overwrite`."""
    import json
    out = check_writable_folder(out, "--out", "the app notebooks")
    folder = Path(notebooks) if notebooks is not None else default_notebooks()
    lessons = {p.name: p for p in _notebooks(folder)}
    unknown = [n for n in names if n not in lessons]
    if unknown:
        raise FileNotFoundError(f"no lesson {unknown} in {folder} (it has {sorted(lessons)})")
    made = {out / n: json.dumps(app_notebook(json.loads(lessons[n].read_text())), indent=1) + "\n" for n in names}
    changed = [t for t, text in made.items() if t.exists() and t.read_text() != text]
    if changed and not overwrite:
        raise FileExistsError(f"{out} already holds app notebook(s) that differ from the new ones "
                              f"({', '.join(t.name for t in changed)}): pass --overwrite or choose another --out")
    install_voila_template()
    out.mkdir(parents=True, exist_ok=True)
    for target, text in made.items():
        tmp = target.parent / f".{target.name}.incoming"
        tmp.write_text(text)
        os.replace(tmp, target)
    return list(made)


def _same_notebook(a: Path, b: Path) -> bool:
    """Equal notebooks but for their cells' ids (otter assign draws new ones on every run)."""
    import json

    def content(path: Path):
        try:
            nb = json.loads(path.read_text())
        except (ValueError, OSError):
            return path.read_bytes()
        for cell in nb.get("cells", []):
            cell.pop("id", None)
        return nb
    return content(a) == content(b)


def _run_lesson(nb: Path, parameters: dict, keep: Optional[Path]) -> float:
    """Run one lesson with papermill (the store is the environment's `CLIPOOD_KIT_CACHE`); its run time in s."""
    import papermill
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clipood-kit-prepare-") as tmp:
        try:
            papermill.execute_notebook(str(nb), str(Path(tmp) / nb.name), cwd=str(nb.parent), parameters=parameters,
                                       progress_bar=False, kernel_name="python3")
        except papermill.PapermillExecutionError as e:
            raise LessonFailed(f"lesson {nb.name} failed in cell {e.exec_count}: {e.ename}: "
                               f"{str(e.evalue).splitlines()[0][:300] if e.evalue else ''}; open it in "
                               f"JupyterLab to see the cell (the store keeps what ran before)") from None
        if keep is not None:                     # whole or absent: its presence says the lesson's entries are stored
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / nb.name, Path(keep) / f".{nb.name}.incoming")
            os.replace(Path(keep) / f".{nb.name}.incoming", Path(keep) / nb.name)
    return round(time.perf_counter() - start, 1)


def prepare_store(cache: Path, notebooks: Optional[Path] = None, parameters: Optional[Dict[str, dict]] = None,
                  progress: bool = True, keep: Optional[Path] = None, workers: int = 1,
                  first: Sequence[str] = ()) -> Dict[str, float]:
    """Run every lesson once (its default setting, or `parameters[name]`) with the result store at `cache`;
    returns each notebook's run time in seconds, in the lessons' order. `keep`: a folder for the executed notebooks
    (with outputs), each written when its lesson has ended (so its store entries are all there). `workers`: how
    many lessons run at once, each in a kernel of its own (the store writes each entry atomically: two lessons that
    compute the same entry write the same bytes). `first`: lessons started before the others (the longest, so that
    lessons run at once end together)."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    lessons = _notebooks(notebooks)
    first = [first] if isinstance(first, str) else list(first)             # one name, or several
    unknown = sorted(set(first) - {nb.name for nb in lessons})
    if unknown:
        raise ValueError(f"first names no lesson of {notebooks or default_notebooks()}: {unknown}")
    cache = check_writable_folder(cache, "--cache", "the lessons' result store")
    cache.mkdir(parents=True, exist_ok=True)
    times = {}
    previous = os.environ.get("CLIPOOD_KIT_CACHE")
    os.environ["CLIPOOD_KIT_CACHE"] = str(cache.resolve())       # the kernels inherit it
    try:
        start = sorted(lessons, key=lambda nb: nb.name not in first)          # stable: the rest in their order
        jobs = [(nb, (parameters or {}).get(nb.name, {}), keep) for nb in start]
        bar = tqdm(total=len(jobs), desc="lessons", disable=not progress)
        if workers == 1:
            for job in jobs:
                times[job[0].name] = _run_lesson(*job)
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_run_lesson, *job): job[0].name for job in jobs}
                for future in as_completed(futures):         # the bar moves as each lesson ends
                    if future.exception() is not None:
                        for other in futures:
                            other.cancel()
                        raise future.exception()
                    times[futures[future]] = future.result()
                    bar.update()
        bar.close()
        times = {nb.name: times[nb.name] for nb in lessons}         # in the lessons' order
    finally:
        if previous is None:
            os.environ.pop("CLIPOOD_KIT_CACHE", None)
        else:
            os.environ["CLIPOOD_KIT_CACHE"] = previous
    return times
