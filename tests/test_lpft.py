"""LP-FT (methods/lpft.py): the head alone during the probe, then everything; the head is part of the model state."""
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import evaluate_state, zero_shot_scores
from clipood_kit.methods import METHODS, compose
from clipood_kit.methods.lpft import ClassHead


def test_the_head_replaces_the_training_classes_rows_with_its_normalised_weights():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    weight = torch.randn(3, 8, generator=g) * 4
    ids = torch.tensor([4, 0, 2])
    out = ClassHead(weight, ids).adapt_classes(text)
    expected = text.clone()
    for row, c in enumerate(ids.tolist()):                   # an independent transcription, row by row
        expected[c] = weight[row] / weight[row].norm()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out[[1, 3, 5]], text[[1, 3, 5]])      # the other classes keep their text features


def test_probe_trains_the_head_alone_then_both_and_the_state_carries_the_head(tmp_path):
    exp = build_experiment(per_cell=3, steps=6, batch_size=8, method="lp-ft", settings=["lp-ft.probe=0.5"],
                           cache_dir="off")
    setup = prepare(exp)
    seen = {}

    def on_step(row, model, method):
        seen[row["step"]] = model.trained_state()

    r = run_method(setup, run_dir=tmp_path / "run", progress=False, on_step=on_step)
    assert [row["probing"] for row in r["history"]] == [1, 1, 1, 0, 0, 0]
    visual = [k for k in seen[1] if k.startswith("visual.") and seen[1][k].is_floating_point()]
    head0 = setup.zero_shot.text_features[setup.split.train_class_ids]
    for step in (1, 2, 3):                                   # the probe: the image tower rests, the head moves
        assert all(torch.equal(seen[step][k], setup.zero_shot.state[k]) for k in visual)
        assert not torch.allclose(seen[step]["parts.lp-ft.weight"], head0)
    assert any(not torch.equal(seen[6][k], setup.zero_shot.state[k]) for k in visual)
    last = r["states"]["last"]
    assert set(k.split(".")[0] for k in last) == {"visual", "parts"}
    # the saved run holds the trained state, which scores as the run scored it
    saved = load_file(tmp_path / "run" / "model_last.safetensors")
    assert saved.keys() == last.keys()
    assert evaluate_state(setup, saved) == r["models"]["last"]


def test_at_step_zero_lp_ft_is_the_zero_shot_model():
    setup = prepare(build_experiment(per_cell=3, method="lp-ft", cache_dir="off"))
    from clipood_kit.methods import Method
    method = Method(setup.cfg.method)
    zero = setup.prepare_method(method).trained_state()
    assert "parts.lp-ft.weight" in zero
    ours, zero_shot = evaluate_state(setup, zero), zero_shot_scores(setup)
    assert ours["accuracy"] == zero_shot["accuracy"]
    # the classifier is the zero-shot one up to the head's renormalisation of already unit rows (float noise,
    # which near-tied OOD scores such as entropy can turn into a rank swap, so OOD is compared through it)
    from clipood_kit.engine.encoding import state_classifier
    assert torch.allclose(state_classifier(setup, zero), setup.zero_shot.text_features, atol=1e-6)


def test_lp_ft_is_one_registry_line():
    assert METHODS["lp-ft"].describe() == "lp-ft" and compose("lp-ft").loss.probe == 0.5
