"""Building what a course hands out from the instructor notebooks in `notebooks/`.

- **Student versions** (`student_versions`): the notebooks are otter-grader assignments (a raw
  `# ASSIGNMENT CONFIG` cell, `# BEGIN QUESTION` blocks with solutions and tests). `otter assign` strips the
  solutions (`# SOLUTION` lines become `...`), keeps the visible checks as `grader.check("name")` cells that run in
  the student's own notebook, and keeps hidden tests for the autograder version only.
- **The class-room store** (`prepare_store`): every notebook run once in its default setting (papermill) with
  `CLIPOOD_KIT_CACHE` pointing at the store, so everything the lessons train is computed once; students whose
  `CLIPOOD_KIT_CACHE` points there (read-only is enough) open every notebook without training.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from tqdm.auto import tqdm


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


def student_versions(out: Path, notebooks: Optional[Path] = None, autograder: bool = False) -> List[Path]:
    """`out/NAME.ipynb` for every lesson: solutions stripped, checks kept (and `out/autograder/NAME.ipynb`, with
    solutions and hidden tests, when `autograder`). Returns the student notebooks' paths."""
    otter = Path(sys.executable).parent / "otter"
    if not otter.exists():
        raise FileNotFoundError(f"otter-grader is not installed in this environment ({otter} is missing): "
                                f"pip install -e '.[notebooks]'")
    out = Path(out)
    written = []
    for nb in _notebooks(notebooks):
        with tempfile.TemporaryDirectory(prefix="clipood-kit-assign-") as tmp:
            proc = subprocess.run([str(otter), "assign", str(nb), tmp], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"otter assign failed on {nb.name}: {proc.stderr.strip()[-2000:]}")
            out.mkdir(parents=True, exist_ok=True)
            target = out / nb.name
            shutil.copyfile(Path(tmp) / "student" / nb.name, target)
            written.append(target)
            if autograder:
                (out / "autograder").mkdir(exist_ok=True)
                shutil.copyfile(Path(tmp) / "autograder" / nb.name, out / "autograder" / nb.name)
    return written


def prepare_store(cache: Path, notebooks: Optional[Path] = None,
                  parameters: Optional[Dict[str, dict]] = None, progress: bool = True) -> Dict[str, float]:
    """Run every lesson once (its default setting, or `parameters[name]`) with the result store at `cache`;
    returns each notebook's run time in seconds."""
    import papermill
    lessons = _notebooks(notebooks)
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    times = {}
    previous = os.environ.get("CLIPOOD_KIT_CACHE")
    os.environ["CLIPOOD_KIT_CACHE"] = str(cache.resolve())       # the kernels inherit it
    try:
        for nb in tqdm(lessons, desc="lessons", disable=not progress):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="clipood-kit-prepare-") as tmp:
                papermill.execute_notebook(str(nb), str(Path(tmp) / nb.name), cwd=str(nb.parent),
                                           parameters=(parameters or {}).get(nb.name, {}), progress_bar=False,
                                           kernel_name="python3")
            times[nb.name] = round(time.perf_counter() - start, 1)
    finally:
        if previous is None:
            os.environ.pop("CLIPOOD_KIT_CACHE", None)
        else:
            os.environ["CLIPOOD_KIT_CACHE"] = previous
    return times
