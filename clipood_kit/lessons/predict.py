"""Predict, then reveal: a prediction question as a widget that holds the student's answer, and a Reveal button
placed after the run that shows the run's answer beside it only when pressed.

Voila runs every cell before the page shows, so a reveal printed by a cell would sit on the page under its
question before anyone answered. Here the question cell shows the choice (or a box for a number); the reveal cell,
after the figures, shows only a button; pressing it renders `exercises.reveal(prediction, answer)` and the
finding that gives the answer away. The same widgets work in JupyterLab and in Voila.

    ask = Prediction("Which prompt set wins?", options=TEMPLATE_SETS)
    show(ask)                                   # the question cell
    ...                                         # the run and its figures
    show(ask.reveal(prose.best_template(table), finding=prose.template_finding(table)))
"""
from __future__ import annotations

import math
from typing import Sequence

from clipood_kit.lessons.exercises import check_number, reveal as reveal_text

NOT_ANSWERED = "**Answer the question above first** (pick one, or type a number), then press Reveal."


class Prediction:
    """One prediction question: a choice among `options`, or a number in [low, high] (`number=(low, high)`)."""

    def __init__(self, question: str, options: Sequence[str] | None = None, number: tuple | None = None,
                 unit: str = ""):
        import ipywidgets as widgets
        if (options is None) == (number is None):
            raise ValueError("a prediction is either a choice (options=[...]) or a number (number=(low, high))")
        self.options, self.number, self.unit = (list(options) if options else None), number, unit
        if self.options:
            self.input = widgets.RadioButtons(options=self.options, value=None, layout=widgets.Layout(width="auto"))
        else:
            low, high = number
            self.input = widgets.Text(placeholder=f"a number between {low:g} and {high:g}",
                                      description="your answer", style={"description_width": "initial"})
        self.question = widgets.HTML(f"<b>Predict.</b> {question}")
        self.widget = widgets.VBox([self.question, self.input], layout=widgets.Layout(width="100%"))

    @property
    def value(self):
        """The committed prediction: an option, a float, or None while unanswered or unreadable."""
        if self.options:
            return self.input.value
        try:
            x = float(str(self.input.value).strip().rstrip("%"))
        except ValueError:
            return None
        return x if math.isfinite(x) else None

    def problem(self) -> str | None:
        """What is wrong with the current answer (None when it can be revealed against)."""
        if self.options:
            return None if self.input.value in self.options else NOT_ANSWERED
        if not str(self.input.value).strip():
            return NOT_ANSWERED
        try:
            check_number(self.value if self.value is not None else self.input.value, *self.number, name="your answer",
                         unit=self.unit)
        except AssertionError as e:
            return f"**{e}.** Change your answer, then press Reveal again."
        return None

    def reveal(self, answer, explanation: str = "", finding: str = "", tolerance: float | None = None) -> "Reveal":
        """The Reveal button for this question, set beside the run's `answer` (computed now, shown on press)."""
        return Reveal(self, answer, explanation, finding, tolerance)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)


class Reveal:
    """A Reveal button and the output it fills when pressed: the student's prediction against the run's answer,
    then the finding. Pressing it again after changing the answer reveals against the new answer."""

    def __init__(self, prediction: Prediction, answer, explanation: str = "", finding: str = "",
                 tolerance: float | None = None):
        import ipywidgets as widgets
        self.prediction, self.answer, self.explanation = prediction, answer, explanation
        self.finding, self.tolerance = finding, tolerance
        self.button = widgets.Button(description="Reveal", button_style="info", icon="eye")
        self.output = widgets.Output(layout=widgets.Layout(width="100%"))
        self.button.on_click(lambda _: self.press())
        self.widget = widgets.VBox([self.button, self.output], layout=widgets.Layout(width="100%"))

    def text(self) -> str:
        """The Markdown a press shows for the current answer."""
        problem = self.prediction.problem()
        if problem:
            return problem
        said = reveal_text(self.prediction.value, self.answer, self.explanation, self.tolerance,
                           self.prediction.unit)
        return said + (f"\n\n{self.finding}" if self.finding else "")

    def press(self) -> str:
        """What the button does: show `text()` in the output (and return it)."""
        shown = self.text()
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"text/markdown": shown, "text/plain": shown}},)
        return shown

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)
