"""The existing methods keep their numbers through the frame rebuild (issue 19): every registered method, run on
a small float64 experiment with today's code, gives the scores, weights and losses the code before the rebuild
gave (`tests/golden/methods_before_frame.json`, written by `tests/golden/method_numbers.py` at commit ee8d5a8, and
written again at commit d1ab963 when the shipped tiny CLIP and the demo task changed (issue 28): from there the
numbers guard the method contract's rebuild (issue 30))."""
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


def close(key, a, b):
    """Weights, losses and accuracies to 1e-5 (relative); an OOD metric to a couple of images. The numbers were
    written on one CPU and are checked on others, whose BLAS sums in another order: float64 scores that nearly tie
    can swap (AUROC and AUPR move by 1 / (n_ID n_OOD), about 0.01 points; FPR95 by one OOD image, 1 / n_OOD, about
    0.4 points), and parts kept in float32 (OGEN's teacher) differ by 1e-6. A real change of a method moves
    its weights far more than that."""
    if "/ood/" in key:
        return math.isclose(a, b, abs_tol=1.0 if key.endswith("FPR95") else 0.05)
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


@pytest.fixture(scope="module")
def now():
    """Today's numbers of the methods the golden file holds (methods added since have no golden numbers)."""
    from method_numbers import method_numbers
    return method_numbers(sorted(json.loads((GOLDEN / "methods_before_frame.json").read_text())))


@pytest.mark.parametrize("name", sorted(json.loads((GOLDEN / "methods_before_frame.json").read_text())))
def test_a_method_gives_the_numbers_it_gave_before_the_rebuild(now, name):
    before = flat(json.loads((GOLDEN / "methods_before_frame.json").read_text())[name])
    after = flat(json.loads(json.dumps(now[name])))
    assert sorted(before) == sorted(after), set(before) ^ set(after)
    off = {k: (before[k], after[k]) for k in before if not close(k, before[k], after[k])}
    assert not off, f"{len(off)} numbers moved, e.g. {list(off.items())[:5]}"


def test_the_comparison_fails_on_a_moved_number():
    """The check above is not vacuous: one weight off by 1e-4 (relative) is caught, and an AUROC off by 0.1 points."""
    before = flat(json.loads((GOLDEN / "methods_before_frame.json").read_text())["ce"])
    key = next(k for k in before if k.startswith("weights/last/"))
    moved = dict(before, **{key: before[key] * (1 + 1e-4) + 1e-4})
    assert any(not close(k, before[k], moved[k]) for k in before)
    key = next(k for k in before if "/ood/" in k and k.endswith("AUROC"))       # and an OOD metric off by 0.1
    assert not close(key, before[key], before[key] + 0.1)
