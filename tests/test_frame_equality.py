"""The existing methods keep their numbers through the frame rebuild (issue 19): every registered method, run on
a small float64 experiment with today's code, gives the scores, weights and losses the code before the rebuild
gave (`tests/golden/methods_before_frame.json`, written by `tests/golden/method_numbers.py` at commit ee8d5a8)."""
import json
import math
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        elif isinstance(v, list):
            out.update({f"{prefix}{k}/{i}": x for i, x in enumerate(v)})
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def now():
    from method_numbers import method_numbers
    return method_numbers()


@pytest.mark.parametrize("name", sorted(json.loads((GOLDEN / "methods_before_frame.json").read_text())))
def test_a_method_gives_the_numbers_it_gave_before_the_rebuild(now, name):
    before = flat(json.loads((GOLDEN / "methods_before_frame.json").read_text())[name])
    after = flat(json.loads(json.dumps(now[name])))
    assert sorted(before) == sorted(after), set(before) ^ set(after)
    off = {k: (before[k], after[k]) for k in before
           if not math.isclose(before[k], after[k], rel_tol=1e-6, abs_tol=1e-9)}
    assert not off, f"{len(off)} numbers moved, e.g. {list(off.items())[:5]}"


def test_the_comparison_fails_on_a_moved_number():
    """The check above is not vacuous: one weight off by 1e-5 (relative) is caught."""
    before = flat(json.loads((GOLDEN / "methods_before_frame.json").read_text())["ce"])
    key = next(k for k in before if k.startswith("weights/last/"))
    moved = dict(before, **{key: before[key] * (1 + 1e-5) + 1e-5})
    assert any(not math.isclose(before[k], moved[k], rel_tol=1e-6, abs_tol=1e-9) for k in before)
