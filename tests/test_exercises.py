"""The lessons' self-checks: a correct answer written independently of the library passes; each common mistake
fails with a message that names it; a missing answer fails and says so."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipood_kit.lessons import exercises as ex


# correct answers, written from the papers' formulas without the library
def ensemble(per_template):
    return F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=-1)


def mms_logits(f, t, y, lam, scale):
    cos = F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).T
    tt = F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).T
    return scale * (cos + lam * (1 - tt[y]))


def bma_weights(T, a, b):
    x = torch.tensor([(t + 0.5) / (T + 1) for t in range(T + 1)], dtype=torch.float64)
    w = x ** (a - 1) * (1 - x) ** (b - 1)
    return w / w.sum()


CORRECT = {
    "ensemble": ensemble, "mms_logits": mms_logits, "bma_weights": bma_weights,
    "harmonic_mean": lambda a, b: 0.0 if a + b == 0 else 2 * a * b / (a + b),
    "wise_ft": lambda z, f, a: {k: (1 - a) * z[k] + a * f[k] for k in z},
    "mean_displacement": lambda r, m: float((1 - F.cosine_similarity(r, m, dim=-1)).mean()),
    "mcm": lambda s, T: torch.softmax(s / T, dim=1).max(1).values,
    "auroc": lambda i, o: float(((i[:, None] > o[None]).double() + 0.5 * (i[:, None] == o[None]).double()).mean()),
    "context_cosines": lambda c, e: (c / c.norm(dim=1, keepdim=True)) @ (e / e.norm(dim=1, keepdim=True)).T,
}


@pytest.mark.parametrize("name", sorted(ex.IMPLEMENT_CHECKS))
def test_a_correct_answer_passes(name):
    ex.IMPLEMENT_CHECKS[name](CORRECT[name])


@pytest.mark.parametrize("name", sorted(ex.IMPLEMENT_CHECKS))
def test_an_unwritten_answer_fails_and_says_so(name):
    def todo(*args):
        ...
    with pytest.raises(AssertionError, match="replace the ... with your answer|must return a dict"):
        ex.IMPLEMENT_CHECKS[name](todo)


def _beta_on(x, a, b):
    """Normalised Beta weights evaluated on the grid `x` (a student's wrong grid)."""
    w = x.double() ** (a - 1) * (1 - x.double()) ** (b - 1)
    return w / w.sum()


MISTAKES = [
    ("mms_logits", lambda f, t, y, lam, s: s * (F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).T)
     + lam * (1 - F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).T)[y], "inside the temperature"),
    ("mms_logits", lambda f, t, y, lam, s: s * (f @ t.T + lam * (1 - F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).T)[y]),
     "use cosines"),
    ("mms_logits", lambda f, t, y, lam, s: mms_logits(f, t, y, -lam, s), "not subtracted"),
    ("mms_logits", lambda f, t, y, lam, s: mms_logits(f, t, y, lam, s) + s * lam * F.one_hot(y, t.shape[0]),
     "target class gets no margin"),
    ("ensemble", lambda x: F.normalize(x.mean(0), dim=-1), "before averaging"),
    ("ensemble", lambda x: F.normalize(x, dim=-1).mean(0), "normalise again"),
    ("harmonic_mean", lambda a, b: (a + b) / 2, "arithmetic mean"),
    ("bma_weights", lambda T, a, b: bma_weights(T, b, a), "swapped"),
    ("bma_weights", lambda T, a, b: bma_weights(T - 1, a, b), "T \\+ 1"),
    ("bma_weights", lambda T, a, b: bma_weights(T, a, b) * 7, "divide by their sum"),
    ("bma_weights", lambda T, a, b: _beta_on(torch.arange(T + 1) / T, a, b), "bin centres"),
    ("bma_weights", lambda T, a, b: _beta_on(torch.linspace(0, 1, T + 1), a, b), "infinite at x = 0"),
    ("bma_weights", lambda T, a, b: _beta_on((torch.arange(T + 1) + 1) / (T + 2), a, b), "bin centres"),
    ("harmonic_mean", lambda a, b: 2 * a * b / (a + b), "return 0 there"),
    ("wise_ft", lambda z, f, a: {k: a * z[k] + (1 - a) * f[k] for k in z}, "swapped"),
    ("wise_ft", lambda z, f, a: [z, f], "must return a dict"),
    ("mean_displacement", lambda r, m: float(F.cosine_similarity(r, m, dim=-1).mean()), "1 - cos"),
    ("mean_displacement", lambda r, m: float((1 - (r * m).sum(-1)).mean()), "normalise"),
    ("mcm", lambda s, T: s.max(1).values, "max-logit"),
    ("mcm", lambda s, T: torch.softmax(s, 1).max(1).values, "temperature"),
    ("auroc", lambda i, o: 100 * CORRECT["auroc"](i, o), "percentage"),
    ("auroc", lambda i, o: CORRECT["auroc"](o, i), "positive class"),
    ("auroc", lambda i, o: float((i[:, None] > o[None]).double().mean()), "ties"),
    ("context_cosines", lambda c, e: c @ e.T, "normalise both"),
    ("context_cosines", lambda c, e: F.normalize(c, dim=-1) @ e.T, "normalise the word embeddings too"),
    ("context_cosines", lambda c, e: F.normalize(c, dim=0) @ F.normalize(e, dim=0).T, "each row"),
]


@pytest.mark.parametrize("name, wrong, hint", MISTAKES)
def test_a_common_mistake_fails_with_its_hint(name, wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        ex.IMPLEMENT_CHECKS[name](wrong)


def test_a_crashing_or_misshapen_answer_is_reported_not_raised():
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        ex.check_harmonic_mean(lambda a, b: 1 / 0)
    with pytest.raises(AssertionError, match=r"has shape \(5,\), expected \(5, 4\)"):
        ex.check_mms_logits(lambda f, t, y, lam, s: torch.zeros(5))
    with pytest.raises(AssertionError, match="is not a function"):
        ex.check_mcm(3)


def test_a_number_prediction_must_be_committed_and_valid():
    with pytest.raises(AssertionError, match="commit to a prediction first"):
        ex.check_number(None, 0, 1)
    with pytest.raises(AssertionError, match="a fraction, not a percentage"):
        ex.check_number(40, 0, 1)
    with pytest.raises(AssertionError, match="must be a number"):
        ex.check_number("0.3", 0, 1)
    with pytest.raises(AssertionError, match="must be a number"):
        ex.check_number(math.nan, 0, 1)
    ex.check_number(0.4, 0, 1)


def test_reveal_sets_the_prediction_beside_the_answer():
    assert "Right." in ex.reveal("a", "a") and "Not this time" in ex.reveal("b", "a")
    assert "off by 0.05" in ex.reveal(0.30, 0.35, tolerance=0.1) and "Right." in ex.reveal(0.30, 0.35, tolerance=0.1)
    assert "Close." in ex.reveal(0.2, 0.35, tolerance=0.1)
    assert "not predicted yet" in ex.reveal(..., "a")


HOSTILE = {"None": lambda *a: None, "a string": lambda *a: "0.5", "a ragged list": lambda *a: [[1], [2, 3]],
           "a dict": lambda *a: {"x": 1}, "NaN": lambda *a: float("nan"), "an object": lambda *a: object(),
           "a huge int": lambda *a: 10 ** 400, "a generator": lambda *a: (x for x in range(3)),
           "a function of no arguments": lambda: 1, "not a function": 3, "a KeyError": lambda *a: {}["x"],
           "a bool tensor": lambda *a: torch.ones(3, dtype=torch.bool)}


@pytest.mark.parametrize("name", sorted(ex.IMPLEMENT_CHECKS))
@pytest.mark.parametrize("answer", sorted(HOSTILE))
def test_a_check_never_raises_anything_but_its_message_on_a_students_input(name, answer):
    with pytest.raises(AssertionError) as failed:
        ex.IMPLEMENT_CHECKS[name](HOSTILE[answer])
    assert str(failed.value).strip(), "a check failed without saying why"
