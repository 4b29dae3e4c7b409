import pytest
import torch
import torch.nn.functional as F

from clipood_kit.evaluation import features as evaluation
from clipood_kit.engine.experiment import ExperimentConfig
from clipood_kit.methods import Batch, Method, RunContext, compose
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.settings import set_method_fields
from clipood_kit.engine.training import TrainConfig


@pytest.fixture(scope="module")
def setup(prepared_world):
    return prepared_world(ExperimentConfig(per_cell=4))


def test_context_classifier_is_the_normalised_class_mean_per_template(setup):
    model, tok = setup.zero_shot.loaded.model, setup.zero_shot.loaded.tokenizer
    ctx = evaluation.context_classifier(model, tok, ["star", "heart", "ring"], ["a sketch of a {}.", "a {}."])
    with torch.no_grad():
        f = F.normalize(model.encode_text(tok(["a sketch of a star.", "a sketch of a heart.", "a sketch of a ring."])), dim=-1)
    assert torch.allclose(ctx[0], F.normalize(f.mean(0), dim=-1), atol=1e-6)
    assert ctx.shape == (2, f.shape[1])


def test_context_kl_is_zero_at_step_zero_and_positive_after_a_change(setup):
    method = Method(compose("car-ft"))
    method.prepare(setup.method_context(method))
    part = method.regularisers[0]
    names = [setup.dataset.classes[i] for i in setup.split.train_class_ids]
    expected = evaluation.context_classifier(setup.zero_shot.loaded.model, setup.zero_shot.loaded.tokenizer, names, setup.zero_shot.templates)
    assert torch.allclose(part.context_features, expected)        # prepare builds the experiment's classifier
    model = setup.model()
    encoder = model.image_features
    method.setup(RunContext(model, setup.zero_shot.text_features, setup.zero_shot.logit_scale, 10, 0, torch.device("cpu")))
    images = torch.stack([setup.zero_shot.loaded.preprocess(setup.dataset[i][0]) for i in range(8)])
    labels = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        kl, metrics = part.penalty(Batch(0, encoder(images), labels, images))
        assert kl.abs().item() < 1e-6 and metrics["context_kl"].abs().item() < 1e-6
        shifted = torch.randn(8, expected.shape[1], generator=torch.Generator().manual_seed(0))   # another encoder
        assert part.penalty(Batch(0, shifted, labels, images))[0].item() > 1e-3


def test_beta_zero_equals_plain_fine_tuning_and_beta_changes_training(setup):
    train = TrainConfig(steps=4, batch_size=8, lr=1e-4, seed=2)
    ce = run_method(setup.for_method(compose("ce"), train), progress=False)
    zero = run_method(setup.for_method(set_method_fields(compose("car-ft"), {"context-kl.weight": 0.0}), train), progress=False)
    one = run_method(setup.for_method(compose("car-ft"), train), progress=False)
    for k, v in ce["states"]["last"].items():
        assert torch.equal(v, zero["states"]["last"][k]), k
    assert any(not torch.equal(v, one["states"]["last"][k]) for k, v in ce["states"]["last"].items())
    assert all(r["context_kl"] >= 0 for r in one["history"]) and one["history"][-1]["context_kl"] > 0
    assert one["method_config"]["regularisers"] == [{"kind": "context-kl", "weight": 1.0}]


def test_car_ft_combines_with_mms_and_bma(setup):
    r = run_method(setup.for_method(compose("car-ft-clipood"), TrainConfig(steps=3, batch_size=8, lr=1e-4)), progress=False)
    assert r["primary"] == "bma" and set(r["models"]) == {"last", "bma"}
    with pytest.raises(ValueError, match=r"needs context features .* call method.prepare\(setup\)"):
        Method(compose("car-ft")).setup(RunContext(setup.model(), setup.zero_shot.text_features, 10.0, 5, 0,
                                                   torch.device("cpu")))
