import math

import pytest
import torch
import torch.nn.functional as F

from clipood_kit.engine.experiment import ExperimentConfig, prepare
from clipood_kit.methods import FeatureGenerator, LocalMeanTeacher, Method, RunContext, compose
from clipood_kit.methods.ogen import nearest_classes
from clipood_kit.engine.runs import run_method
from clipood_kit.engine.scoring import harmonic_mean
from clipood_kit.engine.settings import set_method_fields
from clipood_kit.engine.training import TrainConfig


def ogen(**settings):
    return set_method_fields(compose("ogen"), settings)


def run_context(setup, text, steps=10):
    return RunContext(setup.model(), text, setup.logit_scale, steps, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def setup():
    return prepare(ExperimentConfig(per_cell=4))


def test_generator_is_norm_of_mlp_of_query_plus_attention():
    torch.manual_seed(0)
    gen = FeatureGenerator(16, heads=4).eval()
    q, k, v = torch.randn(3, 2, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    # independent computation from the weights: per-head scaled dot-product attention, then the output projection
    w, b = gen.attention.in_proj_weight, gen.attention.in_proj_bias
    qp, kp, vp = (x @ w[i * 16:(i + 1) * 16].T + b[i * 16:(i + 1) * 16] for i, x in enumerate((q, k, v)))
    heads = []
    for h in range(4):
        s = slice(4 * h, 4 * (h + 1))
        attn = torch.softmax(qp[..., s] @ kp[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(attn @ vp[..., s])
    attended = torch.cat(heads, -1) @ gen.attention.out_proj.weight.T + gen.attention.out_proj.bias
    mlp = torch.relu(q @ gen.mlp[0].weight.T + gen.mlp[0].bias) @ gen.mlp[2].weight.T + gen.mlp[2].bias
    expected = (mlp + attended) / (mlp + attended).norm(dim=-1, keepdim=True)
    assert torch.allclose(gen(q, k, v), expected, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by ogen.heads"):
        FeatureGenerator(10, heads=4)


def test_local_mean_teacher_is_the_mean_of_a_growing_window_of_the_trajectory():
    torch.manual_seed(1)
    module = torch.nn.Linear(3, 2)
    total, fraction = 20, 0.3
    teacher = LocalMeanTeacher(module, total, fraction=fraction, max_snapshots=10)    # stride 2
    trajectory = {0: {n: p.detach().clone() for n, p in module.named_parameters()}}
    sizes = []
    for t in range(1, total + 1):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        trajectory[t] = {n: p.detach().clone() for n, p in module.named_parameters()}
        teacher.update(module)
        taken = [s for s in trajectory if s == 0 or s % 2 == 0 or s == total]
        inside = [s for s in taken if s >= t - math.ceil(fraction * t)] or [max(taken)]
        assert teacher.window == inside, t
        for n in trajectory[0]:
            expected = torch.stack([trajectory[s][n] for s in inside]).mean(0)
            assert torch.allclose(teacher.average[n], expected, atol=1e-6), (t, n)
        sizes.append(t - teacher.window_start(t))
    assert sizes == sorted(sizes) and sizes[-1] == math.ceil(fraction * total)
    state = teacher.state_dict()
    again = LocalMeanTeacher(module, total, fraction=fraction, max_snapshots=10)
    again.load_state_dict(state)
    assert again.window == teacher.window and all(torch.equal(again.average[n], teacher.average[n]) for n in teacher.average)
    with pytest.raises(ValueError, match="fraction"):
        LocalMeanTeacher(module, 5, fraction=0.0)


@pytest.mark.parametrize("rule", ["cosine", "dot"])
def test_neighbours_and_unknown_names_follow_the_rule(setup, rule):
    """Known neighbours by the class means' cosine, or by their raw dot product (the official code's
    `cosine_sim_base`, computed on unnormalised means); unknown names by the text cosine."""
    method = Method(ogen(**{"ogen.neighbours": rule}))
    method.prepare(setup.part_inputs())
    part = method.regularisers[0]
    text = setup.text_features[setup.train_class_ids]
    method.setup(run_context(setup, text))
    mean = part.class_feature_mean
    if rule == "cosine":
        mean = mean / mean.norm(dim=1, keepdim=True)
    for c in range(len(text)):
        sims = [(float(mean[c] @ mean[j]), j) for j in range(len(text)) if j != c]
        assert set(part.neighbours[c].tolist()) == {j for _, j in sorted(sims, reverse=True)[:3]}
        sims = [(float(text[c] @ u), j) for j, u in enumerate(part.unknown_text_features)]
        assert set(part.unknown_neighbours[c].tolist()) == {j for _, j in sorted(sims, reverse=True)[:3]}
    assert torch.equal(part.unknown_text_features, setup.text_features[setup.new_ids])
    std = part.class_feature_std
    assert std.shape == text.shape and (std >= 0).all() and std.max() > 0


def test_the_two_neighbour_rules_differ_when_norms_differ():
    means = torch.tensor([[1.0, 0.0], [0.9, 0.1], [3.0, 3.0]])   # class 2 is far in angle but long
    assert nearest_classes(means, 1, "cosine")[0].item() == 1
    assert nearest_classes(means, 1, "dot")[0].item() == 2
    with pytest.raises(ValueError, match="ogen.neighbours must be one of"):
        nearest_classes(means, 1, "euclid")


def test_warm_up_trains_only_the_generator_then_distillation_starts_at_zero(setup):
    train = TrainConfig(steps=6, batch_size=8, lr=1e-4, seed=4)
    snapshots = {}

    def on_step(row, encoder, method):
        snapshots[row["step"]] = (encoder.trained_state(),
                                  {k: v.clone() for k, v in method.regularisers[0].generator.state_dict().items()})

    r = run_method(setup.for_method(ogen(**{"ogen.warmup": 0.5, "self-distill.start": 0.5}), train), progress=False,
                   on_step=on_step)
    h = r["history"]
    assert [row["warm_up"] for row in h] == [1, 1, 1, 0, 0, 0]
    for step in (1, 2, 3):                            # the encoder is still the zero-shot one
        assert all(torch.equal(v, setup.zero_shot_state[k]) for k, v in snapshots[step][0].items())
    assert not all(torch.equal(snapshots[1][1][k], v) for k, v in snapshots[3][1].items())   # the generator learns
    assert "distillation" not in h[2] and abs(h[3]["distillation"]) < 1e-6   # teacher == student at the first step
    assert any(not torch.equal(v, setup.zero_shot_state[k]) for k, v in snapshots[4][0].items())
    assert h[5]["distillation"] > 0
    assert set(r["models"]) == {"last", "teacher"} and r["primary"] == "last"


def test_the_generator_learns_to_synthesise_held_out_class_features():
    """Leave-one-out: a feature generated for class y from its neighbours alone is classified as y more and more.
    Its neighbours are y's family siblings, whose prompts are nearly synonymous for the tiny CLIP, so the
    generated feature stays hard to tell from theirs: the bar is 3x chance and a rise of 0.12."""
    setup = prepare(ExperimentConfig(per_cell=10))
    r = run_method(setup.for_method(ogen(**{"ogen.warmup": 0.9, "self-distill.start": 0.9}), TrainConfig(steps=60, batch_size=32, lr=1e-4)), progress=False)
    acc = [row["generated_accuracy"] for row in r["history"]]
    reg = [row["regression"] for row in r["history"]]
    early, late = sum(acc[:10]) / 10, sum(acc[-10:]) / 10
    assert late > early + 0.12 and late > 3 / len(setup.train_class_ids), acc
    assert sum(reg[-5:]) < 0.6 * sum(reg[:5]), reg


def test_stopped_and_resumed_ogen_run_is_bit_identical(setup, tmp_path):
    cfg = ogen(**{"ogen.warmup": 0.25, "self-distill.start": 0.25, "self-distill.snapshots": 4, "ogen.dropout": 0.1})
    train = TrainConfig(steps=8, batch_size=8, lr=1e-4, seed=5)
    full = run_method(setup.for_method(cfg, train), progress=False)
    run_method(setup.for_method(cfg, train), run_dir=tmp_path, stop_after=3, progress=False)
    rest = run_method(setup.for_method(cfg, train), run_dir=tmp_path, resume=True, progress=False)
    for name in ("last", "teacher"):
        for k, v in full["states"][name].items():
            assert torch.equal(v, rest["states"][name][k]), (name, k)
    assert full["history"] == rest["history"]


def test_base_to_new_with_harmonic_mean():
    setup = prepare(ExperimentConfig(per_cell=4, protocol="base-to-new"))
    r = run_method(setup.for_method(compose("ogen"), TrainConfig(steps=5, batch_size=10, lr=1e-4)), progress=False)
    head = r["headline"]["train"]
    assert set(r["headline"]) == {"train"} and set(head) == {"base", "new", "H"}
    assert head["H"] == pytest.approx(harmonic_mean(head["base"], head["new"]))


def test_missing_inputs_are_named(setup):
    domain_shift = prepare(ExperimentConfig(per_cell=2, protocol="domain-shift"))
    with pytest.raises(ValueError, match="needs held-out class names"):
        Method(compose("ogen")).prepare(domain_shift.part_inputs())
    with pytest.raises(ValueError, match=r"call method.prepare\(setup\) first"):
        Method(compose("ogen")).setup(run_context(setup, setup.text_features))
    method = Method(compose("ogen"))
    part = method.regularisers[0]
    text = F.normalize(torch.randn(3, 128), dim=1)
    part.unknown_text_features = part.class_feature_mean = part.class_feature_std = text
    with pytest.raises(ValueError, match="at least 4 training classes"):
        method.setup(run_context(setup, text, steps=5))
