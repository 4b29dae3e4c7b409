"""The lessons as a course uses them.

- Student versions (otter assign): solutions stripped, checks kept; a student notebook runs top to bottom without
  an error and every check in it fails; with the instructor's answers filled in, every check passes.
- Class-room mode: `prepare_store` fills a result store; with the store read-only and training switched off,
  every student notebook runs, unsolved and solved, and leaves the store as it was (so nothing trains); with an
  empty store the same switch refuses to train and says how to fill it.
"""
import json
import os
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest

from clipood_kit.core import store
from clipood_kit.lessons.build import prepare_store, student_versions
from notebook_outputs import error_outputs
from test_notebooks import FAST, NOTEBOOKS


def _execute(src: Path, out: Path, params: dict, env: dict = None) -> dict:
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        papermill.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3", cwd=str(src.parent),
                                   progress_bar=False, execution_timeout=300)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return json.loads(out.read_text())


def _check_outputs(nb: dict) -> dict:
    """{question: passed?} from the outputs of the notebook's `grader.check("question")` cells."""
    results = {}
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("grader.check("):
            name = src.split('"')[1]
            text = "".join("".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
                           for o in cell["outputs"])
            assert text, f"check {name} printed nothing"
            results[name] = "passed" in text and "failed" not in text.lower()
    return results


def _solutions(instructor: Path) -> list:
    """The instructor's solution cells, in order (the cells between '# BEGIN SOLUTION' and '# END SOLUTION')."""
    cells, inside, out = json.loads(instructor.read_text())["cells"], False, []
    for cell in cells:
        src = "".join(cell["source"])
        if cell["cell_type"] == "raw" and src.startswith("# BEGIN SOLUTION"):
            inside = True
        elif cell["cell_type"] == "raw" and src.startswith("# END SOLUTION"):
            inside = False
        elif inside and cell["cell_type"] == "code":
            out.append(src)
    return out


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    return student_versions(tmp_path_factory.mktemp("student"), NOTEBOOKS, autograder=True)


def test_every_lesson_asks_before_it_shows_and_has_an_exercise():
    """A prediction widget (revealed later by its button) and an otter Implement question in every lesson."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        assert "# ASSIGNMENT CONFIG" in "".join(cells[0]["source"]), path.name
        questions = [i for i, c in enumerate(cells)
                     if c["cell_type"] == "raw" and "".join(c["source"]).startswith("# BEGIN QUESTION")]
        assert questions and all("".join(cells[i + 1]["source"]).startswith("**Implement.**") for i in questions)
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        asks = [i for i, src in enumerate(code) if " = Prediction(" in src]
        reveals = [i for i, src in enumerate(code) if ".reveal(" in src]
        assert asks and len(reveals) == len(asks) and all(a < r for a, r in zip(asks, reveals)), path.name


def test_student_versions_strip_the_solutions(students):
    assert [p.name for p in students] == sorted(FAST)
    for path in students:
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and "# SOLUTION" not in text, path.name
        nb = json.loads(text)
        answers = [c for c in nb["cells"] if "otter_answer_cell" in c["metadata"].get("tags", [])]
        assert answers and all("..." in "".join(c["source"]) for c in answers), path.name
        assert (path.parent / "autograder" / path.name).exists()


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _one_kernel(notebooks: list, params: dict, work: Path, env: dict) -> list:
    """Run `notebooks` one after the other in one kernel, each from a clean namespace (`%reset -f` between them;
    imported modules stay loaded, which is what saves a kernel's start) and with `params` injected after its
    parameters cell as papermill does; returns each notebook with its outputs."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    parts = []
    for i, nb in enumerate(notebooks):
        path = work.with_name(f"part{i}-{work.name}")
        path.write_text(json.dumps(nb))
        parts.append(parameterize_notebook(load_notebook_node(str(path)), params))    # as papermill's execute does
    combined, starts = parts[0], [0]
    for i, part in enumerate(parts[1:], start=1):
        combined.cells.append(nbformat.v4.new_code_cell("%reset -f"))
        starts.append(len(combined.cells))
        for cell in part.cells:
            cell.id = f"p{i}-{cell.id}"[:64]             # ids stay unique in the combined notebook
        combined.cells.extend(part.cells)
    nbformat.write(combined, work)
    ran = _execute(work, work.with_name("ran-" + work.name), None, env=env)
    ends = [s - 1 for s in starts[1:]] + [len(ran["cells"])]
    return [dict(ran, cells=ran["cells"][a:b]) for a, b in zip(starts, ends)]


@pytest.mark.parametrize("name", sorted(FAST))
def test_a_student_notebook_runs_from_the_store_and_its_checks_fail_until_solved(students, fast_lessons, name,
                                                                                 tmp_path):
    """As a class runs it: the store of the fast setting (conftest `fast_lessons`, prepared once per run) and
    training switched off (a run would raise). Unsolved, the notebook runs without an error and every check
    fails; with the instructor's answers pasted in (then every code cell is the instructor's), every check
    passes. The two run in one kernel, each from a clean namespace (`_one_kernel`), and leave the store exactly
    as it was: every result was read, none computed (so a read-only store serves; as root here, write bits would
    not show it)."""
    store = fast_lessons[0]
    before_store = _listing(store)
    unsolved = json.loads(next(p for p in students if p.name == name).read_text())
    # the instructor's answers, pasted into the answer cells
    solved = json.loads(json.dumps(unsolved))
    answers = [c for c in solved["cells"] if "otter_answer_cell" in c["metadata"].get("tags", [])]
    solutions = _solutions(NOTEBOOKS / name)
    assert len(answers) == len(solutions)
    for cell, solution in zip(answers, solutions):
        cell["source"] = "\n".join(line.replace("  # SOLUTION", "") for line in solution.splitlines()
                                   if "BEGIN SOLUTION" not in line and "END SOLUTION" not in line)
    solved["cells"].append(nbformat.v4.new_code_cell(MODEL_MODULES, id="model-modules"))
    in_class = {"CLIPOOD_KIT_CACHE": str(store), "CLIPOOD_KIT_NO_TRAINING": "1"}
    ran, ran_solved = _one_kernel([unsolved, solved], FAST[name], tmp_path / name, in_class)
    for nb in (ran, ran_solved):
        errors = error_outputs(nb)
        assert not errors, errors[:1]
    before, after = _check_outputs(ran), _check_outputs(ran_solved)
    assert before and not any(before.values()), before
    assert after == {q: True for q in before}, after
    assert _listing(store) == before_store
    if name not in BUILDS_A_MODEL:
        loaded = "".join("".join(o.get("text", "")) for o in ran_solved["cells"][-1]["outputs"])
        assert loaded.strip() == "model modules: []", f"{name} read the store, yet imported {loaded}"


# A lesson that only reads the store builds no model, so its kernel never imports open_clip or torchvision (1.7 s of
# its start: torchvision imports torch._dynamo). Lessons 1 and 2 show one image through the zero-shot model.
BUILDS_A_MODEL = ("01_world_and_zero_shot.ipynb", "02_margins.ipynb")
MODEL_MODULES = "import sys\nprint('model modules:', sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules))"


def test_without_the_store_training_is_refused_and_the_fix_named(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="lessons prepare --cache"):
        _execute(NOTEBOOKS / "03_beta_moving_average.ipynb", tmp_path / "out.ipynb", FAST["03_beta_moving_average.ipynb"],
                 env={"CLIPOOD_KIT_CACHE": str(tmp_path / "empty"), "CLIPOOD_KIT_NO_TRAINING": "1"})


def test_the_store_round_trips_and_refuses_stale_entries(tmp_path):
    import numpy as np
    import torch
    value = {"t": torch.tensor([[1.5, -2.25]], dtype=torch.float32), "a": np.arange(3, dtype=np.int64),
             "x": [0.1, {"y": 7}]}
    calls = []
    first = store.cached("unit", {"k": 1}, lambda: calls.append(1) or value, tmp_path)
    again = store.cached("unit", {"k": 1}, lambda: calls.append(1) or value, tmp_path)
    assert len(calls) == 1 and torch.equal(again["t"], value["t"]) and again["t"].dtype == torch.float32
    assert np.array_equal(again["a"], value["a"]) and again["x"] == value["x"] and first is value
    store.cached("unit", {"k": 2}, lambda: calls.append(1) or value, tmp_path)
    assert len(calls) == 2                                   # another payload, another entry
    entry = next(tmp_path.glob("unit-*.json"))
    entry.write_text("{damaged")
    store.cached("unit", {"k": 1}, lambda: calls.append(1) or value, tmp_path)
    store.cached("unit", {"k": 2}, lambda: calls.append(1) or value, tmp_path)
    assert len(calls) == 3                                   # only the damaged one was recomputed
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's folder should be: no entry can be written")
    with pytest.warns(UserWarning, match="not writable"):
        assert store.cached("unit", {"k": 3}, lambda: 5, blocked / "store") == 5


def test_building_from_a_folder_without_lessons_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no lesson notebooks .* pass --notebooks"):
        student_versions(tmp_path / "out", tmp_path)
    with pytest.raises(FileNotFoundError, match="no lesson notebooks"):
        prepare_store(tmp_path / "cache", tmp_path)
    assert not (tmp_path / "cache").exists()


def test_a_slider_start_outside_its_grid_is_refused_before_any_training():
    from clipood_kit.engine.builder import build_experiment
    from clipood_kit.lessons.data import bma_lesson
    exp = build_experiment(per_cell=2, steps=3)
    with pytest.raises(ValueError, match="must both be values of GRID"):
        bma_lesson(exp, [0.1, 0.5], 2, alpha=0.3, beta=0.5)


# -- class-room tools that keep a lecturer's work (issue 26) ------------------------------------------------------

def _lesson_folder(tmp_path, *extra):
    folder = tmp_path / "lessons"
    folder.mkdir()
    shutil.copy(NOTEBOOKS / "01_world_and_zero_shot.ipynb", folder)
    for name, cells in extra:
        nbformat.write(nbformat.v4.new_notebook(cells=cells), folder / name)
    return folder


def test_student_versions_keep_a_lecturers_edits_unless_overwrite(tmp_path):
    folder, out = _lesson_folder(tmp_path), tmp_path / "student"
    [path] = student_versions(out, folder)
    path.write_text(path.read_text().replace("Predict", "Predict (edited by the lecturer)", 1))
    edited = path.read_bytes()
    with pytest.raises(FileExistsError, match="differ from the new ones .*01_world_and_zero_shot.ipynb.*--overwrite"):
        student_versions(out, folder)
    assert path.read_bytes() == edited
    student_versions(out, folder, overwrite=True)
    assert path.read_bytes() != edited
    student_versions(out, folder)                     # unchanged notebooks are no edits: written again, no error


def test_a_broken_assignment_writes_no_student_notebook(tmp_path):
    broken = [nbformat.v4.new_raw_cell("# ASSIGNMENT CONFIG\nthis: [is not yaml"),
              nbformat.v4.new_markdown_cell("# BEGIN QUESTION\nname: q1")]
    folder, out = _lesson_folder(tmp_path, ("02_broken.ipynb", broken)), tmp_path / "student"
    with pytest.raises(ValueError, match=r"otter assign failed on 02_broken.ipynb: .*nothing was written"):
        student_versions(out, folder)
    assert not out.exists() or not any(out.iterdir())


def test_a_lesson_that_raises_is_named_with_its_cell_also_among_lessons_run_at_once(tmp_path):
    """One lesson, then two run at once (`workers=2`): the one that raises is named with its cell; the other ran
    and its executed notebook was kept."""
    from clipood_kit.lessons.build import LessonFailed
    folder = tmp_path / "lessons"
    folder.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                                   nbformat.v4.new_code_cell("raise ValueError('boom')")]),
                   folder / "01_raises.ipynb")
    with pytest.raises(LessonFailed, match=r"lesson 01_raises.ipynb failed in cell 2: ValueError: boom"):
        prepare_store(tmp_path / "cache", folder, progress=False)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(2); y = 2")]),
                   folder / "00_fine.ipynb")
    with pytest.raises(LessonFailed, match=r"lesson 01_raises.ipynb failed in cell 2: ValueError: boom"):
        prepare_store(tmp_path / "cache", folder, progress=False, workers=2, keep=tmp_path / "kept")
    assert (tmp_path / "kept" / "00_fine.ipynb").exists() and not (tmp_path / "kept" / "01_raises.ipynb").exists()
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        prepare_store(tmp_path / "cache", folder, progress=False, workers=0)


def test_the_lessons_named_first_start_first_and_times_keep_the_lessons_order(tmp_path, monkeypatch):
    """`prepare_store(first=...)` (the suite starts its longest lesson first): the named lessons run before the
    others, the others in their order; the times come back in the lessons' order; an unknown name is refused."""
    from clipood_kit.lessons import build
    ran = []
    monkeypatch.setattr(build, "_run_lesson", lambda nb, parameters, keep: ran.append(nb.name) or float(len(ran)))
    folder = tmp_path / "lessons"
    folder.mkdir()
    for name in ("01_a.ipynb", "02_b.ipynb", "03_c.ipynb"):
        nbformat.write(nbformat.v4.new_notebook(), folder / name)
    times = prepare_store(tmp_path / "cache", folder, progress=False, first=["03_c.ipynb"])
    assert ran == ["03_c.ipynb", "01_a.ipynb", "02_b.ipynb"]
    assert list(times) == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"] and times["03_c.ipynb"] == 1.0
    ran.clear()
    prepare_store(tmp_path / "cache", folder, progress=False, first="02_b.ipynb")       # one name as a string
    assert ran == ["02_b.ipynb", "01_a.ipynb", "03_c.ipynb"]
    with pytest.raises(ValueError, match=r"first names no lesson of .*\['04_d.ipynb'\]"):
        prepare_store(tmp_path / "cache", folder, progress=False, first=["04_d.ipynb"])


def test_a_store_that_cannot_be_written_is_refused_before_any_lesson_runs(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises((PermissionError, NotADirectoryError), match="file"):
        prepare_store(tmp_path / "file" / "cache", NOTEBOOKS, progress=False)
    with pytest.raises(NotADirectoryError, match="--out .* is a file"):
        student_versions(tmp_path / "file", NOTEBOOKS)
