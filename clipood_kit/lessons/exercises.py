"""The lessons' self-checks: a student's implementation against the library on random inputs, and the text that
sets a student's prediction beside the run's answer (shown by `lessons.predict`'s Reveal button).

Every `check_*` raises AssertionError with a message that says what differs (shape, which entry, by how much) and,
where a common mistake explains the difference, names it. The otter-grader test cells in the notebooks call
these (one line each), so the checks are unit-tested here and the notebooks stay thin.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F

from clipood_kit.evaluation import ood
from clipood_kit.evaluation.features import ensemble_text_features
from clipood_kit.methods import beta_weights, interpolate, margin_logits
from clipood_kit.methods.coop import context_word_cosines
from clipood_kit.studies.projection import mean_displacement
from clipood_kit.engine.scoring import harmonic_mean

NOT_DONE = "replace the ... with your answer"


# --- comparing an answer with the library ------------------------------------------------------------------------

def _as_tensor(value, what: str) -> torch.Tensor:
    if value is None or value is Ellipsis:
        raise AssertionError(f"{what} returned {value!r}: {NOT_DONE} (did you forget the `return`?)")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise AssertionError(f"{what} returned a {type(value).__name__}, which is not a number or tensor: {e}")


def _compare(got, want: torch.Tensor, what: str, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    got = _as_tensor(got, what)
    want = want.to(torch.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{what} contains NaN or inf")
    diff = (got - want).abs()
    if not (diff <= atol + rtol * want.abs()).all():
        i = int(diff.argmax())
        where = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), got.shape)) if got.ndim else ()
        at = f" at index {where}" if where else ""
        raise AssertionError(f"{what} differs from the library{at}: got {got.flatten()[i].item():.6g}, expected "
                             f"{want.flatten()[i].item():.6g} (largest difference {diff.max().item():.3g})")


def _matches(got, want: torch.Tensor) -> bool:
    try:
        _compare(got, want, "")
        return True
    except AssertionError:
        return False


def _call(fn: Callable, what: str, *args, errors: Dict[type, str] | None = None):
    """`fn(*args)`; any error the student's code raises becomes the check's message (with the hint of `errors`
    for its type, when a common mistake explains it)."""
    if not callable(fn):
        raise AssertionError(f"{what} is not a function: define it with `def` in the cell above")
    try:
        return fn(*args)
    except NotImplementedError:
        raise AssertionError(f"{what} is not written yet: {NOT_DONE}")
    except Exception as e:          # the student's error, reported as the check's message
        hint = next((h for kind, h in (errors or {}).items() if isinstance(e, kind)), "")
        raise AssertionError(f"{what} raised {type(e).__name__}: {e}" + (f". Hint: {hint}" if hint else "")) from None


def _check_cases(fn: Callable, name: str, cases, reference: Callable, hints: Sequence = (),
                 rules: Sequence = (), nonfinite: str = "", errors: Dict[type, str] | None = None) -> None:
    """Each case's arguments through `fn` and `reference`. An answer of the right shape holding NaN or inf fails
    with the `nonfinite` hint; `rules` [(holds(answer), message)] are checked next; on a mismatch, the first hint
    (wrong formula, message) that reproduces the student's answer is named. `errors` {exception type: hint}
    explains an error the student's function raises."""
    for args in cases:
        what = f"{name}({', '.join(_describe(a) for a in args)})"
        got = _call(fn, what, *args, errors=errors)
        want = reference(*args)
        answer = _as_tensor(got, what)
        if answer.shape == want.shape and not torch.isfinite(answer).all():
            raise AssertionError(f"{what} contains NaN or inf" + (f". Hint: {nonfinite}" if nonfinite else ""))
        for holds, message in rules:
            if answer.shape == want.shape and not holds(answer):
                raise AssertionError(f"{what}: {message}")
        try:
            _compare(got, want, what)
        except AssertionError as e:
            for wrong, message in hints:
                try:
                    if _matches(got, wrong(*args)):
                        raise AssertionError(f"{e}. Hint: {message}") from None
                except (RuntimeError, ValueError, ZeroDivisionError):
                    continue
            raise


def _describe(a) -> str:
    if isinstance(a, torch.Tensor):
        return f"tensor {tuple(a.shape)}" if a.ndim else f"{a.item():g}"
    if isinstance(a, dict):
        return f"state with {len(a)} tensors"
    return f"{a:g}" if isinstance(a, float) else repr(a)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- implement and check -----------------------------------------------------------------------------------------

def check_ensemble(fn: Callable, seed: int = 0) -> None:
    """`fn(per_template)`: T x C x D text features (one row per class, one slice per prompt template) -> the C x D
    zero-shot classifier: each template's features normalised, averaged over templates, normalised again
    (CLIP's prompt ensembling; `evaluation.ensemble_text_features`)."""
    g = _generator(seed)
    cases = [(torch.randn(t, c, 6, generator=g) * torch.rand(t, c, 1, generator=g) * 5,) for t, c in ((1, 3), (4, 5))]
    hints = [(lambda x: x.mean(0), "normalise the averaged feature of each class (rows of unit length)"),
             (lambda x: F.normalize(x.mean(0), dim=-1),
              "normalise each template's features before averaging, or templates with longer features dominate"),
             (lambda x: F.normalize(x, dim=-1).mean(0), "normalise again after averaging")]
    _check_cases(fn, "ensemble", cases, ensemble_text_features, hints)


def check_mms_logits(fn: Callable, seed: int = 0) -> None:
    """`fn(image_features, text_features, labels, lam, scale)` -> the N x C MMS logits
    z_j = scale * (cos(f, t_j) + lam * (1 - cos(t_y, t_j))), no margin on the target (CLIPood, Eq. 5)."""
    g = _generator(seed)
    cases = []
    for lam, scale in ((0.0, 100.0), (0.3, 100.0), (1.0, 17.0)):
        cases.append((torch.randn(5, 8, generator=g) * 3, torch.randn(4, 8, generator=g) * 2,
                      torch.randint(0, 4, (5,), generator=g), lam, scale))

    def cos(f, t):
        return F.normalize(f.double(), dim=-1) @ F.normalize(t.double(), dim=-1).T

    def margins(t, lam):
        tn = F.normalize(t.double(), dim=-1)
        return lam * (1 - tn @ tn.T)

    hints = [(lambda f, t, y, lam, s: s * cos(f, t) + margins(t, lam)[y],
              "the margin sits inside the temperature: scale * (cos + margin), not scale * cos + margin"),
             (lambda f, t, y, lam, s: s * (f.double() @ t.double().T + margins(t, lam)[y]),
              "use cosines: normalise the image and text features before the dot product"),
             (lambda f, t, y, lam, s: s * (cos(f, t) + margins(t, lam)[y]) + s * lam * F.one_hot(y, t.shape[0]),
              "the target class gets no margin (1 - cos(t_y, t_y) = 0)"),
             (lambda f, t, y, lam, s: s * (cos(f, t) - margins(t, lam)[y]),
              "the margin is added to the other classes' logits (making them harder to beat), not subtracted"),
             (lambda f, t, y, lam, s: s * (cos(f, t) + lam * cos(t, t)[y] * (1 - torch.eye(t.shape[0]))[y]),
              "the margin is lam * (1 - cos(t_y, t_j)): dissimilar classes get the larger margins")]
    _check_cases(fn, "mms_logits", cases, lambda f, t, y, lam, s: margin_logits(f.double(), t.double(), y, lam, s), hints)


def check_harmonic_mean(fn: Callable) -> None:
    """`fn(base, new)` -> H = 2 * base * new / (base + new), 0 where both are 0 (the base-to-new headline)."""
    cases = [(90.0, 80.0), (100.0, 50.0), (0.0, 0.0), (40.0, 0.0)]
    hints = [(lambda a, b: torch.tensor((a + b) / 2), "that is the arithmetic mean; H = 2ab / (a + b)"),
             (lambda a, b: torch.tensor(math.sqrt(a * b)), "that is the geometric mean; H = 2ab / (a + b)")]
    _check_cases(fn, "harmonic_mean", cases, lambda a, b: torch.tensor(harmonic_mean(a, b)), hints,
                 errors={ZeroDivisionError: "at base = new = 0 the formula divides 0 by 0: return 0 there (a model "
                                            "with no accuracy on either side has H = 0)"})


def check_bma_weights(fn: Callable) -> None:
    """`fn(T, alpha, beta)` -> the T + 1 normalised BMA weights w_t / sum w, w_t = BetaPDF((t + 0.5) / (T + 1);
    alpha, beta), t = 0 (the zero-shot model) .. T (CLIPood, Eq. 8)."""
    cases = [(10, 0.5, 0.5), (120, 0.1, 0.1), (30, 2.0, 5.0)]

    def normalised(w):
        w = torch.tensor(w, dtype=torch.float64)
        return w / w.sum()

    def pdf(x, a, b):
        return x ** (a - 1) * (1 - x) ** (b - 1)
    rules = [(lambda w: abs(float(w.sum()) - 1) < 1e-6, "the weights must sum to 1: divide by their sum")]
    hints = [(lambda T, a, b: normalised([pdf((t + 0.5) / T, a, b) for t in range(T)]),
              "there are T + 1 states (t = 0, the zero-shot model, to T): evaluate at (t + 0.5) / (T + 1)"),
             (lambda T, a, b: normalised([pdf((t + 0.5) / (T + 1), b, a) for t in range(T + 1)]),
              "alpha and beta are swapped: alpha shapes the start (x near 0), beta the end"),
             (lambda T, a, b: normalised([pdf((t + 1) / (T + 2), a, b) for t in range(T + 1)]),
              "evaluate the density at the bin centres (t + 0.5) / (T + 1)")]
    nonfinite = ("the Beta density is infinite at x = 0 (alpha < 1) and x = 1 (beta < 1), so a grid that touches "
                 "an end (t / T, linspace(0, 1, T + 1), t / (T + 1)) gives inf there: evaluate at the bin centres "
                 "(t + 0.5) / (T + 1), which never reach 0 or 1")
    _check_cases(fn, "bma_weights", cases, lambda T, a, b: normalised(beta_weights(T, a, b)), hints, rules, nonfinite)


def check_wise_ft(fn: Callable, seed: int = 0) -> None:
    """`fn(zero_shot, fine_tuned, a)` -> {name: (1 - a) * zero_shot[name] + a * fine_tuned[name]} (WiSE-FT,
    Wortsman et al. 2022, Eq. 1)."""
    g = _generator(seed)
    zero = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    fine = {k: v + torch.randn(v.shape, generator=g) for k, v in zero.items()}
    for a in (0.0, 0.3, 1.0):
        what = f"wise_ft(zero_shot, fine_tuned, {a:g})"
        got = _call(fn, what, zero, fine, a)
        if not isinstance(got, dict) or set(got) != set(fine):
            raise AssertionError(f"{what} must return a dict with the same names as the states "
                                 f"({sorted(fine)}), got {type(got).__name__}"
                                 + (f" with {sorted(got)}" if isinstance(got, dict) else ""))
        want = interpolate(zero, fine, a)
        for k in fine:
            try:
                _compare(got[k], want[k], f"{what}[{k!r}]")
            except AssertionError as e:
                if _matches(got[k], interpolate(zero, fine, 1 - a)[k]):
                    raise AssertionError(f"{e}. Hint: a = 0 is the zero-shot model and a = 1 the fine-tuned one; "
                                         f"your ends are swapped") from None
                raise


def check_mean_displacement(fn: Callable, seed: int = 0) -> None:
    """`fn(reference, moved)`: N x D features of the same images under two models -> mean of 1 - cos."""
    g = _generator(seed)
    a = torch.randn(20, 8, generator=g) * 4
    cases = [(a, a + 0.5 * torch.randn(20, 8, generator=g)), (a, a * 3)]
    hints = [(lambda r, m: torch.tensor(float(F.cosine_similarity(r.double(), m.double()).mean())),
              "that is the mean cosine; the displacement is 1 - cos"),
             (lambda r, m: torch.tensor(float((1 - (r.double() * m.double()).sum(-1)).mean())),
              "normalise the features first (cosine, not dot product): a model that only rescales features moves "
              "nothing")]
    _check_cases(fn, "mean_displacement", cases, lambda r, m: torch.tensor(mean_displacement(r, m)), hints)


def check_mcm(fn: Callable, seed: int = 0) -> None:
    """`fn(cosines, temperature)`: N x C cosines to the ID classes -> N MCM scores max_i softmax(s / T)_i
    (Ming et al., 2022)."""
    g = _generator(seed)
    cases = [(torch.rand(6, 5, generator=g) * 2 - 1, 1.0), (torch.rand(6, 5, generator=g) * 2 - 1, 0.01)]
    hints = [(lambda s, T: s.max(1).values, "that is max-logit; MCM takes the softmax over classes first"),
             (lambda s, T: torch.softmax(s, 1).max(1).values, "divide the cosines by the temperature T"),
             (lambda s, T: torch.softmax(s * T, 1).max(1).values, "divide by T, do not multiply"),
             (lambda s, T: torch.softmax(s / T, 0).max(1).values, "the softmax runs over classes (dim=1), not images")]
    _check_cases(fn, "mcm", cases, lambda s, T: ood.mcm(s.double(), T), hints)


def check_auroc(fn: Callable, seed: int = 0) -> None:
    """`fn(id_scores, ood_scores)` -> P(an ID score > an OOD score) with ties counted 1/2, a fraction in [0, 1]
    (ID is the positive class; `ood.auroc`)."""
    g = _generator(seed)
    cases = [(torch.randn(30, generator=g) + 1, torch.randn(20, generator=g)),
             (torch.tensor([0.0, 1.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0]))]
    hints = [(lambda i, o: torch.tensor(100 * ood.auroc(i, o)), "return a fraction in [0, 1], not a percentage"),
             (lambda i, o: torch.tensor(ood.auroc(o, i)), "ID is the positive class: count ID scores above OOD ones"),
             (lambda i, o: (i[:, None] > o[None]).double().mean(), "count ties (equal scores) as one half")]
    _check_cases(fn, "auroc", cases, lambda i, o: torch.tensor(ood.auroc(i, o)), hints)


def check_context_cosines(fn: Callable, seed: int = 0) -> None:
    """`fn(ctx, embeddings)`: M x W context vectors and V x W word embeddings -> the M x V cosine similarities
    (`methods.coop.context_word_cosines`)."""
    g = _generator(seed)
    cases = [(torch.randn(4, 8, generator=g) * 3, torch.randn(10, 8, generator=g) * 0.2),
             (torch.randn(1, 5, generator=g), torch.randn(3, 5, generator=g))]
    hints = [(lambda c, e: c @ e.T, "normalise both the context vectors and the embeddings (rows of unit length)"),
             (lambda c, e: F.normalize(c, dim=-1) @ e.T, "normalise the word embeddings too"),
             (lambda c, e: c @ F.normalize(e, dim=-1).T, "normalise the context vectors too"),
             (lambda c, e: F.normalize(c, dim=0) @ F.normalize(e, dim=0).T,
              "normalise each row (dim=-1), not each column")]
    _check_cases(fn, "context_cosines", cases, lambda c, e: context_word_cosines(c, e).float(), hints)


# --- predict, then reveal ----------------------------------------------------------------------------------------

def check_number(prediction: object, low: float, high: float, name: str = "prediction", unit: str = "") -> None:
    """A committed number in [low, high]."""
    if prediction is None or prediction is Ellipsis:
        raise AssertionError(f"commit to a prediction first: set `{name}` to a number between {low:g} and {high:g}{unit}")
    if isinstance(prediction, bool) or not isinstance(prediction, (int, float)) or not math.isfinite(prediction):
        raise AssertionError(f"`{name}` must be a number, got {prediction!r}")
    if not low <= prediction <= high:
        raise AssertionError(f"`{name}` = {prediction:g} is outside [{low:g}, {high:g}]{unit}: "
                             + ("a fraction, not a percentage?" if high == 1 and prediction > 1 else "check the scale"))


def reveal(prediction: object, actual: object, explanation: str = "", tolerance: float | None = None, unit: str = "") -> str:
    """Markdown that sets the student's prediction beside the run's answer (a choice, or a number within
    `tolerance`)."""
    if prediction is None or prediction is Ellipsis:
        return "**You have not predicted yet.** Answer the question above first."
    if tolerance is None:
        right = prediction == actual
        said = f"**You predicted** {prediction}. **The run says** {actual}."
    else:
        right = abs(float(prediction) - float(actual)) <= tolerance
        said = (f"**You predicted** {float(prediction):.3g}{unit}. **The run says** {float(actual):.3g}{unit} "
                f"(off by {abs(float(prediction) - float(actual)):.3g}{unit}).")
    verdict = "Right." if right else ("Close." if tolerance is not None and abs(float(prediction) - float(actual))
                                      <= 2 * tolerance else "Not this time: why not?")
    return f"{said} {verdict} {explanation}".strip()


IMPLEMENT_CHECKS: Dict[str, Callable] = {
    "ensemble": check_ensemble, "mms_logits": check_mms_logits, "harmonic_mean": check_harmonic_mean,
    "bma_weights": check_bma_weights, "wise_ft": check_wise_ft, "mean_displacement": check_mean_displacement,
    "mcm": check_mcm, "auroc": check_auroc, "context_cosines": check_context_cosines,
}
