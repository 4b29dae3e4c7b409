"""Predict, then reveal (`lessons.predict`), the findings read from whole curves (`lessons.prose`) and the app
versions of the lessons (`lessons.build.app_notebook`)."""
import json
import re

import pytest

from clipood_kit.lessons import prose
from clipood_kit.lessons.build import APP_LESSONS, VOILA_TEMPLATE, app_notebook, app_versions, install_voila_template
from clipood_kit.lessons.predict import NOT_ANSWERED, Prediction
from test_notebooks import NOTEBOOKS


def _shown(reveal) -> str:
    return "".join(o["data"]["text/markdown"] for o in reveal.output.outputs)


def test_a_reveal_shows_nothing_until_pressed_then_the_answer_beside_the_choice():
    ask = Prediction("which?", options=["up", "down"])
    reveal = ask.reveal("down", explanation="because.", finding="the curve falls")
    assert reveal.output.outputs == ()                       # on the page before a press: the button only
    reveal.button.click()
    assert _shown(reveal) == NOT_ANSWERED                    # pressed before answering: asked to answer first
    ask.input.value = "up"
    reveal.button.click()
    text = _shown(reveal)
    assert "You predicted** up" in text and "The run says** down" in text and "Not this time" in text
    assert text.endswith("the curve falls")
    ask.input.value = "down"                                 # a changed answer is revealed against on the next press
    assert "Right." in reveal.press()


@pytest.mark.parametrize("typed, says", [("", NOT_ANSWERED), ("abc", "must be a number"), ("nan", "must be a number"),
                                         ("7", "outside [0, 1]"), ("12%", "outside [0, 1]")])
def test_a_number_prediction_names_what_is_wrong_with_the_answer(typed, says):
    ask = Prediction("share?", number=(0, 1))
    ask.input.value = typed
    assert says in ask.reveal(0.3).press()


def test_a_number_prediction_is_revealed_within_its_tolerance():
    ask = Prediction("share?", number=(0, 1))
    reveal = ask.reveal(0.30, tolerance=0.05)
    ask.input.value = " 0.33 "
    assert "Right." in reveal.press() and "off by 0.03" in reveal.press()
    ask.input.value = "0.39"
    assert "Close." in reveal.press()
    ask.input.value = "0.9"
    assert "Not this time" in reveal.press()


def test_a_prediction_is_a_choice_or_a_number():
    with pytest.raises(ValueError, match="either a choice"):
        Prediction("?")
    with pytest.raises(ValueError, match="either a choice"):
        Prediction("?", options=["a"], number=(0, 1))


@pytest.mark.parametrize("y, shape", [
    ([86.1, 87.0, 87.6, 84.0, 79.4], 0), ([80, 82, 85, 86, 90], 1), ([90, 88, 85, 80, 79], 2),
    ([85.0, 85.3, 84.9, 85.2, 85.1], 3),
    ([85.0, 85.4, 85.2, 82.0, 80.0], 2),       # a peak within the noise of the start: it falls from the start
    ([80.0, 83.0, 85.0, 85.3, 85.1], 1)])      # a peak within the noise of the end: it keeps rising
def test_a_curve_shape_is_read_from_the_whole_curve_against_its_noise(y, shape):
    assert prose.curve_shape(y, noise=0.5) == prose.CURVE_OPTIONS[shape]


def test_two_end_points_alone_would_misread_a_peaked_curve():
    """The issue's case: lambda 0 -> 1 falls (86.1 -> 79.4) while the curve peaks at lambda 0.3."""
    lambdas, y = [0, 0.1, 0.3, 0.5, 1.0], [86.1, 86.9, 87.6, 84.2, 79.4]
    assert prose.curve_shape(y, 0.5) == prose.CURVE_OPTIONS[0]
    text = prose.curve_reading("last step", lambdas, y, 0.5, "lambda")
    assert "peaks at 87.6 % (lambda = 0.3, +1.5 points)" in text and "-8.2 from the peak" in text
    finding = prose.lambda_finding(lambdas, {"last step: new": y}, 86.0, 0.5)
    assert "+1.6 points from it" in finding and "One image is 0.50 points" in finding


@pytest.mark.parametrize("values, option", [([90, 91, 92], 0), ([80, 81, 79], 1), ([90, 85, 80], 2),
                                            ([85.2, 84.8, 85.0], 3), ([86, 85.2, 85.1], 2)])
def test_a_curve_against_a_reference_counts_only_differences_beyond_the_noise(values, option):
    assert prose.against_reference(values, [85, 85, 85], noise=0.5) == prose.REFERENCE_OPTIONS[option]


def test_the_grid_finding_says_when_the_best_average_is_no_better_than_zero_shot():
    grid, tables = [0.1, 1.0], {"unseen domains / new": [[92.0, 90.0], [91.0, 89.0]]}
    refs = {"zero-shot": {"unseen domains / new": 92.0}, "last": {"unseen domains / new": 88.0}}
    text = prose.grid_finding(tables, grid, refs, {"unseen domains / new": 200})
    assert "no Beta of the grid does better than not fine-tuning" in text
    refs["zero-shot"]["unseen domains / new"] = 89.0
    assert "+3.0 points from zero-shot" in prose.grid_finding(tables, grid, refs, {"unseen domains / new": 200})


def test_shot_counts_are_labelled_in_the_singular_and_zero_shot_has_none():
    cells = {m: {"1": dict.fromkeys(("base", "new", "H", "near MCM", "near max-logit", "far MCM", "far max-logit"),
                                    50.0), "16": dict.fromkeys(("base", "new", "H", "near MCM", "near max-logit",
                                                                 "far MCM", "far max-logit"), 60.0)}
             for m in ("zero-shot", "coop")}
    text = prose.prompt_ood_reading(cells)
    assert "**zero-shot**: base" in text and "**coop** (16 shots)" in text
    assert prose.shots_label(1) == "1 shot" and prose.shots_label("4") == "4 shots"


def test_an_app_keeps_predictions_and_figures_and_drops_the_exercises():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        app = app_notebook(nb)
        text = json.dumps(app["cells"])
        code = [c for c in app["cells"] if c["cell_type"] == "code"]
        assert "BEGIN QUESTION" not in text and "**Implement.**" not in text, path.name
        assert not any("grader.check" in "".join(c["source"]) or "def test_" in "".join(c["source"]) for c in code)
        assert not any(c["cell_type"] == "raw" for c in app["cells"])
        asks = [c for c in app["cells"] if "Prediction(" in "".join(c["source"])]
        assert asks, f"{path.name} asks nothing"
        for cell in asks:                       # every question has its Reveal later in the app
            for name in re.findall(r"^(\w+) = Prediction\(", "".join(cell["source"]), re.M):
                assert f"{name}.reveal(" in text, f"{path.name}: {name} is never revealed"
        # every code cell of the app that the instructor notebook has, in order (nothing else moved)
        kept = [c["id"] for c in app["cells"]]
        assert kept == [c["id"] for c in nb["cells"] if c["id"] in kept]


def test_an_unclosed_question_is_refused():
    nb = {"cells": [{"cell_type": "raw", "source": "# BEGIN QUESTION\nname: q"}]}
    with pytest.raises(ValueError, match="no '# END QUESTION'"):
        app_notebook(nb)


def test_app_versions_are_written_for_the_control_lessons_and_keep_edits_unless_overwrite(tmp_path):
    paths = app_versions(tmp_path / "apps")
    assert [p.name for p in paths] == list(APP_LESSONS)
    paths[0].write_text(paths[0].read_text().replace("lambda", "LAMBDA!"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        app_versions(tmp_path / "apps")
    app_versions(tmp_path / "apps", overwrite=True)
    assert "LAMBDA!" not in paths[0].read_text()
    assert not list((tmp_path / "apps").glob(".*"))         # no staging file left
    with pytest.raises(FileNotFoundError, match="no lesson"):
        app_versions(tmp_path / "other", names=["99_none.ipynb"])


def test_apps_name_the_template_whose_views_wait_and_voila_finds_it_where_it_is_installed(tmp_path, monkeypatch):
    nb = json.loads(sorted(NOTEBOOKS.glob("*.ipynb"))[0].read_text())
    assert app_notebook(nb)["metadata"]["voila"] == {"template": VOILA_TEMPLATE}
    folder = install_voila_template([tmp_path / "data"])
    assert folder == tmp_path / "data" / "voila" / "templates" / VOILA_TEMPLATE
    assert json.loads((folder / "conf.json").read_text()) == {"base_template": "lab"}
    page = (folder / "index.html.j2").read_text()
    assert "extends 'lab/index.html.j2'" in page and "__clipoodWaitsForModels" in page
    assert not list(folder.glob(".*"))                       # no staging file left
    from voila.paths import collect_template_paths
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    found = collect_template_paths(["voila", "nbconvert"], VOILA_TEMPLATE)
    assert str(folder) in found and any(p.endswith("voila/templates/lab") for p in found)   # and its base


def test_the_template_goes_to_the_next_data_folder_when_one_is_not_writable_and_says_the_fix_when_none_is(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert install_voila_template([blocked / "data", tmp_path / "user"]) == (
        tmp_path / "user" / "voila" / "templates" / VOILA_TEMPLATE)
    with pytest.raises(PermissionError, match="JUPYTER_DATA_DIR"):
        install_voila_template([blocked / "data"])
