"""The model state of both towers (models/adapted.py): a part that trains the text tower, end to end."""
from dataclasses import dataclass
from typing import ClassVar, Tuple

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.encoding import encode, state_classifier
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import evaluate_state, score
from clipood_kit.methods import METHODS, MethodConfig, compose
from clipood_kit.methods.losses import CEConfig
from clipood_kit.models.loader import load_clip


@dataclass
class BothTowersCEConfig(CEConfig):
    """Cross-entropy that trains the image and the text tower (FLYP-like, without its contrastive batch)."""
    kind: ClassVar[str] = "ce-both"
    trains: ClassVar[Tuple[str, ...]] = ("image", "text")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    METHODS["ce-both"] = MethodConfig("ce-both", BothTowersCEConfig())
    try:
        exp = build_experiment(per_cell=3, steps=3, batch_size=8, lr=1e-3, cache_dir="off",
                               method=compose("ce-both+wise-ft"))
        setup = prepare(exp)
        out = tmp_path_factory.mktemp("run")
        result = run_method(setup, run_dir=out, progress=False)
        yield setup, result, out
    finally:
        del METHODS["ce-both"]


def test_the_text_tower_trains_and_its_state_is_saved(trained):
    setup, result, out = trained
    last = result["states"]["last"]
    assert {k.split(".")[0] for k in last} == {"visual", "text"}
    zero = setup.model(("image", "text")).trained_state()
    moved = [k for k in last if k.startswith("text.") and last[k].is_floating_point()
             and not torch.equal(last[k], zero[k])]
    assert moved, "no text-tower weight moved"
    # WiSE-FT covers the text tower too: the mix is the midpoint of zero-shot and last
    mid = result["states"]["wise-ft@0.5"]
    k = moved[0]
    assert torch.allclose(mid[k], (zero[k] + last[k]) / 2, atol=1e-6)
    saved = load_file(out / "model_last.safetensors")
    assert saved.keys() == last.keys()


def test_scoring_computes_the_classifier_from_the_state(trained):
    setup, result, _ = trained
    last = result["states"]["last"]
    classifier = state_classifier(setup, last)
    assert not torch.allclose(classifier, setup.zero_shot.text_features)
    # independently: the text tower of the state, encoded by hand (prompt ensemble) on a fresh CLIP
    clip = load_clip(setup.cfg.model, setup.cfg.pretrained).model
    clip.load_state_dict({k[len("text.clip."):]: v for k, v in last.items() if k.startswith("text.clip.")},
                         strict=False)
    with torch.no_grad():
        per_template = torch.stack([F.normalize(clip.encode_text(setup.zero_shot.loaded.tokenizer(
            [t.format(c) for c in setup.dataset.classes])).float(), dim=-1) for t in setup.zero_shot.templates])
    by_hand = F.normalize(per_template.mean(0), dim=-1)
    assert torch.allclose(classifier, by_hand, atol=1e-5)
    enc = encode(setup, last)
    by_hand_scores = score(setup, enc["features"] @ by_hand.T, enc["labels"], enc["domains"])
    assert evaluate_state(setup, last)["accuracy"] == by_hand_scores["accuracy"]
    assert evaluate_state(setup, last) == result["models"]["last"]


def test_a_saved_state_loads_onto_its_base_weights(trained):
    setup, result, out = trained
    loaded = load_clip(setup.cfg.model, str(out / "model_last.safetensors"))
    state = loaded.model.state_dict()
    last = result["states"]["last"]
    for k, v in last.items():
        name = k[len("text.clip."):] if k.startswith("text.clip.") else k
        assert torch.equal(state[name], v), k
    assert loaded.model_id.startswith(f"{setup.cfg.model}/file:model_last.safetensors")


def test_a_model_with_a_frozen_image_tower_keeps_it_out_of_the_state():
    setup = prepare(build_experiment(per_cell=2, cache_dir="off"))
    model = setup.model(("text",))
    state = model.trained_state()
    assert state and all(k.startswith("text.") for k in state)
    assert not any(p.requires_grad for p in model.visual.parameters())
    with pytest.raises(ValueError, match="unknown tower"):
        setup.model(("image", "prompts"))
