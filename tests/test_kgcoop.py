"""KgCoOp (methods/kgcoop.py) against a transcription of the official loss (htyao89/KgCoOp
`KgCoOp/trainers/kgcoop.py`, `CustomCLIP.forward` lines 223-243 and `forward_backward` line 310), registered by its
module alone, and trained end to end: its learnt class features stay nearer CLIP's than CoOp's do."""
import torch
import torch.nn.functional as F

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.engine.runs import run_method
from clipood_kit.methods import METHODS, REGISTRY, Method, compose
from clipood_kit.methods.base import Batch, RunContext


def official_kgcoop_loss(logits, label, text_features, text_features_old, w):
    """The official loss, transcribed: the learnt features normalised, the old ones normalised, a cosine per class
    (CosineSimilarity(dim=1, eps=1e-07)), score = 1 - mean, loss = CE + w * score."""
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
    text_features_old = text_features_old / text_features_old.norm(dim=-1, keepdim=True)
    score = cos(text_features, text_features_old)
    score = 1.0 - torch.mean(score)
    return F.cross_entropy(logits, label) + w * score


def test_the_loss_equals_the_official_one():
    g = torch.Generator().manual_seed(0)
    classes, dim, n = 5, 16, 12
    learnt = torch.randn(classes, dim, generator=g)
    old = torch.randn(classes, dim, generator=g) * 3
    features = torch.randn(n, dim, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    method = Method(compose("kgcoop"))
    run = RunContext(model=torch.nn.Identity(), text_features=F.normalize(old, dim=-1), logit_scale=100.0,
                     total_steps=10, seed=0, device=torch.device("cpu"))
    method.setup(run)
    batch = Batch(step=0, features=features, labels=labels, images=torch.zeros(n, 3, 4, 4), class_features=learnt)
    ours, metrics = method.loss(batch)
    logits = 100.0 * F.normalize(features, dim=-1) @ F.normalize(learnt, dim=-1).T
    assert torch.allclose(ours, official_kgcoop_loss(logits, labels, learnt, old, 8.0), atol=1e-5)
    assert float(metrics["kg_score"]) > 0


def test_registered_by_its_module_with_its_official_budget():
    entry = REGISTRY["kgcoop"]
    assert entry.module == "clipood_kit.methods.kgcoop" and entry.family == "prompt" and "study" in entry.benches
    assert METHODS["kgcoop"].describe() == "coop + kg"
    assert (entry.budget.epochs_for(16), entry.budget.batch_size, entry.budget.lr) == (100, 128, 2e-3)
    from clipood_kit.studies.ood_study import STUDY_METHODS
    assert "kgcoop" in STUDY_METHODS


def test_the_learnt_classes_stay_nearer_clip_than_coops():
    """Same data, seed, steps and lr: KgCoOp's class features (all classes, new ones too) drift from the zero-shot
    classifier (1 - mean cosine) less than half as far as CoOp's; at weight 0 KgCoOp is CoOp, to the bit."""
    def trained(method, **settings):
        setup = prepare(build_experiment(per_cell=3, cache_dir="off", steps=30, batch_size=16, lr=5e-2,
                                         method=method, settings=[f"{k}={v}" for k, v in settings.items()]))
        r = run_method(setup, progress=False)
        model = setup.scratch_for(r["states"]["last"])
        with torch.no_grad():
            learnt = F.normalize(model.class_features().float(), dim=-1)
        return (learnt * F.normalize(setup.zero_shot.text_features.float(), dim=-1)).sum(-1).mean(), r["states"]["last"]
    coop, coop_state = trained("coop")
    kg, _ = trained("kgcoop")
    assert 1 - kg < 0.5 * (1 - coop), (float(kg), float(coop))     # less than half of CoOp's drift
    _, off = trained("kgcoop", **{"kg.weight": 0.0})
    assert torch.equal(off["parts.coop.ctx"], coop_state["parts.coop.ctx"])
