"""Every notebook runs top to bottom in its fast setting (papermill injects the parameters)."""
import json
from pathlib import Path

import pytest

from notebook_outputs import error_outputs

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FAST = {
    "01_world_and_zero_shot.ipynb": {"PER_CELL": 3},
    "02_margins.ipynb": {"PER_CELL": 1, "SWEEP": [0.0, 0.3], "SWEEP_PER_CELL": 3, "STEPS": 6, "LAMBDA": 0.0},
    "03_beta_moving_average.ipynb": {"PER_CELL": 4, "STEPS": 12, "EVERY": 4, "GRID": [0.1, 0.5]},
    "04_fine_tuning.ipynb": {"PER_CELL": 4, "STEPS": 10, "MIXES": [0.0, 0.5, 1.0]},
    "05_features_umap.ipynb": {"PER_CELL": 4, "STEPS": 10, "POINTS": 150},
    "06_ood_detection.ipynb": {"PER_CELL": 4, "STEPS": 10, "METHODS": ["ce", "ogen-ft"]},
    "07_prompt_learning.ipynb": {"PER_CELL": 4, "STEPS": 4, "SHOTS": [1, 2]},
}


def test_every_notebook_has_a_fast_setting_and_no_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(FAST)
    for name in names:
        nb = json.loads((NOTEBOOKS / name).read_text())
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), name
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), name


@pytest.mark.parametrize("name", sorted(FAST))
def test_notebook_runs_without_errors(name, fast_lessons):
    """The notebook as papermill ran it top to bottom in its fast setting (conftest `fast_lessons`, shared with
    test_lessons.py): no error output, and at least one figure."""
    nb = json.loads((fast_lessons[1] / name).read_text())
    errors = error_outputs(nb)
    assert not errors
    figures = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
               if any(k.startswith("application/vnd.plotly") or k.startswith("application/vnd.jupyter.widget")
                      for k in o.get("data", {}))]
    assert figures, "the notebook showed no figure"
