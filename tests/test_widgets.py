import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipood_kit.methods import beta_weights
from clipood_kit.viz.widgets import beta_view, margin_view, nearest_farthest_table


def _text():
    return torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.2]])


def test_margin_view_follows_the_formula_as_lambda_moves():
    names = ["a", "b", "c", "d"]
    t = F.normalize(_text(), dim=-1)
    cos = (t @ t.T).numpy()
    for lam in (0.0, 0.3, 0.8):
        v = margin_view(_text(), names, lam)
        expected = lam * (1 - cos)
        np.fill_diagonal(expected, 0)
        assert np.allclose(v["margins"], expected, atol=1e-6)
    v = margin_view(_text(), names, 0.3)
    assert v["nearest"][0] == "b" and v["farthest"][0] == "d"
    assert nearest_farthest_table(v, names)[2] == {"class": "c", "smallest margin to": v["nearest"][2],
                                                   "largest margin to": v["farthest"][2]}


def test_margins_lower_the_target_probability_of_an_image():
    names = ["a", "b", "c", "d"]
    f = torch.tensor([0.8, 0.5, 0.1])
    p0 = margin_view(_text(), names, 0.0, f, 0, 10.0)
    p1 = margin_view(_text(), names, 0.5, f, 0, 10.0)
    assert p0["target_prob_plain"] == pytest.approx(p0["target_prob_margin"])
    assert p1["target_prob_margin"] < p1["target_prob_plain"]
    assert p1["probs_margin"].sum() == pytest.approx(1.0, abs=1e-5)


def test_beta_view_matches_the_bma_weights():
    v = beta_view(50, 0.5, 0.5, last_fraction=0.1)
    w = np.array(beta_weights(50, 0.5, 0.5))
    assert np.allclose(v["weights"], w / w.sum())
    assert v["final_zero_shot_share"] == pytest.approx(w[0] / w.sum())
    assert v["final_last_share"] == pytest.approx(w[-5:].sum() / w.sum()) and v["last_steps"] == 5
    flat = beta_view(50, 1.0, 1.0)
    assert np.allclose(flat["weights"], 1 / 51)
    assert beta_view(50, 0.5, 3.0)["final_zero_shot_share"] > v["final_zero_shot_share"]


def test_ood_view_gives_the_chosen_sets_scores_and_metrics():
    from clipood_kit.evaluation import ood
    from clipood_kit.viz.widgets import ood_view
    g = torch.Generator().manual_seed(0)
    id_cos, ood_cos = torch.rand(40, 6, generator=g) + 0.2, torch.rand(30, 6, generator=g)
    sets = {"ce": {"ID": ood.all_scores(id_cos, 20.0), "semantic": ood.all_scores(ood_cos, 20.0)}}
    for score in ("MCM", "energy"):
        view = ood_view(sets, "ce", score, "semantic")
        assert np.array_equal(view["id"], sets["ce"]["ID"][score].numpy())
        assert view["AUROC"] == pytest.approx(100 * ood.auroc(sets["ce"]["ID"][score], sets["ce"]["semantic"][score]))
        assert view["fpr"][0] == 0 and view["tpr"][-1] == 1 and score in view["title"]
    with pytest.raises(ValueError, match="shift 'covariate' has no images"):
        ood_view(sets, "ce", "MCM", "covariate")



def _shown(fig):
    """The figure an Output widget's state holds (what a page that connects late reads)."""
    [out] = fig.widget.outputs
    return out["data"]["application/vnd.plotly.v1+json"]


def test_a_live_figure_keeps_the_whole_figure_in_its_widget_state():
    """Every edit after display is in the Output widget's state, so a page that connects after the cells ran
    (Voila) shows the current figure, not the figure at display time."""
    import plotly.graph_objects as go
    from clipood_kit.viz.widgets import LiveFigure
    fig = LiveFigure(go.Figure(go.Scatter(x=[0, 1], y=[1, 2]), layout=dict(title="before")))
    assert _shown(fig)["data"][0]["y"] == [1, 2] and _shown(fig)["layout"]["title"]["text"] == "before"
    fig.data[0].y = [3, 4]
    fig.layout.title = "after"
    assert _shown(fig)["data"][0]["y"] == [3, 4] and _shown(fig)["layout"]["title"]["text"] == "after"
    new = go.Figure([go.Bar(x=["a"], y=[7]), go.Bar(x=["b"], y=[8])], layout=dict(title="replaced"))
    with fig.batch_update():                        # the notebooks' whole-figure swap
        fig.data = []
        fig.layout = new.layout
        fig.add_traces(list(new.data))
    assert [t["y"] for t in _shown(fig)["data"]] == [[7], [8]] and _shown(fig)["layout"]["title"]["text"] == "replaced"
    assert "responsive" not in _shown(fig)["config"] and _shown(fig)["layout"]["height"] == 450


def test_a_batch_update_sends_the_figure_once(monkeypatch):
    import plotly.graph_objects as go
    from clipood_kit.viz.widgets import LiveFigure
    fig = LiveFigure(go.Figure(go.Scatter(y=[1, 2])))
    sent = []
    monkeypatch.setattr(type(fig.widget), "outputs", property(lambda self: sent[-1] if sent else (),
                                                              lambda self, value: sent.append(value)), raising=False)
    with fig.batch_update():
        fig.data[0].y = [5, 6]
        fig.layout.title = "once"
        fig.data[0].name = "n"
    assert len(sent) == 1 and sent[0][0]["data"]["application/vnd.plotly.v1+json"]["data"][0]["y"] == [5, 6]


def test_show_displays_a_live_figure_through_its_widget(monkeypatch):
    import plotly.graph_objects as go
    import IPython.display
    from clipood_kit.viz.widgets import LiveFigure, show
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *items: shown.extend(items))
    fig = LiveFigure(go.Figure(go.Scatter(y=[1])))
    show("x", fig)
    assert shown == ["x", fig.widget]


def test_set_cells_moves_one_models_dots_in_both_panels():
    from clipood_kit.viz.figures import cells_figure, set_cells
    rows = {"zero-shot": {"train domains / base": 80.0, "unseen domains / new": 90.0, "OOD AUROC (MCM)": 50.0},
            "CE": {"train domains / base": 95.0, "unseen domains / new": 85.0, "OOD AUROC (MCM)": 48.0}}
    fig = cells_figure(rows, "t")
    set_cells(fig, 1, {"train domains / base": 70.0, "unseen domains / new": 60.0, "OOD AUROC (MCM)": 55.0}, "MMS")
    moved = [t for t in fig.data if t.meta["model"] == 1]
    assert [list(t.x) for t in moved] == [[70.0, 60.0], [55.0]]
    assert [list(t.text) for t in moved] == [["70.0", "60.0"], ["55.0"]] and all(t.name == "MMS" for t in moved)
    assert [list(t.x) for t in fig.data if t.meta["model"] == 0] == [[80.0, 90.0], [50.0]]    # the reference stays


def test_every_registered_method_has_a_colour_of_its_own():
    """Figures tell methods apart by colour: each registry name (as the study and the bench label rows) and
    zero-shot get a distinct colour, and a display name with a suffix keeps its method's colour."""
    from clipood_kit.methods import METHODS
    from clipood_kit.viz.figures import model_colour
    own = ["zero-shot", "ce", "mms", "clipood", "wise-ft", "bma", "ema", "car-ft", "ogen", "coop", "cocoop",
           "clip-adapter", "tip-adapter", "tip-adapter-f", "swad", "flyp", "lp-ft", "ogen-ft"]
    assert set(own) - {"zero-shot"} <= set(METHODS)
    colours = [model_colour(m) for m in own]
    assert "#000000" not in colours and len(set(colours)) == len(own)
    assert model_colour("CE (last step)") == model_colour("ce") and model_colour("tip-adapter-f (last)") == colours[13]
    assert model_colour("car-ft-clipood") == model_colour("CAR-FT") and model_colour("no such model") == "#000000"
    assert model_colour("ogen-ft (teacher)") == model_colour("ogen-ft") != model_colour("ogen (teacher)")
    # every registered method, those without an entry in the colour table too (a new method needs none)
    assert "#000000" not in [model_colour(m) for m in METHODS]
    assert len({model_colour(m) for m in (*own, "kgcoop", "clip-lora")}) == len(own) + 2
    assert model_colour("kgcoop (last)") == model_colour("kgcoop") != model_colour("coop")


def test_a_curve_figure_keeps_its_lines_and_references_off_the_plot_edge_and_names_the_ends():
    from clipood_kit.viz.figures import curve_figure
    fig = curve_figure([0.0, 0.5, 1.0], {"WiSE-FT: unseen domains / new": [92.0, 93.0, 86.0]}, "t", "mix", "acc",
                       references={"zero-shot": 95.0}, tick_names={0.0: "zero-shot", 1.0: "CE"})
    low, high = fig.layout.yaxis.range
    assert low < 86.0 and high > 95.0                        # the reference above every curve is inside too
    assert list(fig.layout.xaxis.ticktext) == ["0<br>zero-shot", "0.5", "1<br>CE"]


def test_the_fpr95_label_stays_inside_the_roc_plot():
    import numpy as np
    from clipood_kit.viz.figures import ood_figure
    for fpr95, side in ((0.2, "right"), (0.986, "left")):
        fig = ood_figure(np.ones(3), np.zeros(3), np.array([0, 1.0]), np.array([0, 1.0]), "t", fpr95=fpr95)
        marker = [d for d in fig.data if d.name == "FPR95"][0]
        assert marker.textposition == f"bottom {side}"


def _sweep_point(lam, bma, last):
    cells = lambda v: {"accuracy": {"train": {"base": v, "new": v}, "unseen": {"base": v, "new": v, "H": v}}}  # noqa: E731
    return {"lambda": lam, "models": {"bma": cells(bma), "last": cells(last)}}


def test_the_lambda_explorer_moves_every_figure_with_its_slider():
    """Notebook 2's view: the slider's value reaches the margin matrix, the run's accuracy dots, the curve's marker,
    the chosen image's probabilities (as `margin_view` computes them) and the summary line."""
    from clipood_kit.viz.explorers import lambda_explorer, margin_summary_html
    names = ["a", "b", "c", "d"]
    sweep = {"lambdas": [0.0, 0.5], "zero_shot": _sweep_point(0, 50.0, 50.0)["models"]["bma"],
             "points": [_sweep_point(0.0, 60.0, 55.0), _sweep_point(0.5, 70.0, 65.0)]}
    f = torch.tensor([0.8, 0.5, 0.1])
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="must be one of the sweep's lambdas"):
        lambda_explorer(sweep, _text(), names, None, image, "photo", f, 0, 10.0, 0.3)
    view = lambda_explorer(sweep, _text(), names, None, image, "photo", f, 0, 10.0, 0.0)
    assert view.curve["CLIPood (BMA): unseen domains / new"] == [60.0, 70.0]
    heat, accuracy, versus, probs = view.figures[1:]
    view.slider.value = 0.5
    expected = margin_view(_text(), names, 0.5, f, 0, 10.0)
    assert np.allclose(probs.data[1].y, expected["probs_margin"])
    assert versus.layout.shapes[-1].x0 == 0.5 and accuracy.layout.title.text == "Trained with lambda = 0.5"
    assert 70.0 in accuracy.data[1].x or 70.0 in accuracy.data[1].y
    assert np.nanmax(np.array(heat.data[0].z, dtype=float)) > 0
    assert view.info.value == margin_summary_html(expected, names, 0)
    # the summary names the smallest and largest margins from the true class, computed independently
    row = 0.5 * (1 - (F.normalize(_text(), dim=-1) @ F.normalize(_text(), dim=-1).T)[0])
    others = sorted(range(1, 4), key=lambda j: float(row[j]))
    assert view.info.value.index(f"{names[others[0]]} {float(row[others[0]]):.3f}") < view.info.value.index("largest")
    assert view.info.value.endswith(f"{names[others[-1]]} {float(row[others[-1]]):.3f}")
