"""Learning-rate schedules and budgets (core/schedules.py, TrainConfig): Dassl's per-epoch schedule against torch's
own schedulers stepped as Dassl steps them, its epoch length, and a fine-tuning run that follows both."""
import pytest
import torch

from clipood_kit.engine.builder import build_experiment
from clipood_kit.engine.experiment import prepare
from clipood_kit.core.schedules import dassl_epoch_lr, dassl_steps_per_epoch
from clipood_kit.engine.runs import effective_train, run_method
from clipood_kit.engine.training import TrainConfig, learning_rate


@pytest.mark.parametrize("warmup", [1, 2])
def test_dassl_schedule_is_constant_warm_up_then_torch_cosine_stepped_once_per_epoch(warmup):
    epochs, lr = 6, 0.01
    lrs = [dassl_epoch_lr(e, epochs, lr, 1e-5, warmup) for e in range(epochs)]
    assert lrs[:warmup] == [1e-5] * warmup and lrs[warmup] == pytest.approx(lr)
    # the successor of Dassl's ConstantWarmupScheduler: CosineAnnealingLR(T_max = MAX_EPOCH), first stepped when
    # the warm-up ends
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(epochs))
    for e in range(warmup, epochs):
        assert lrs[e] == pytest.approx(cosine.get_last_lr()[0])
        opt.step()
        cosine.step()
    assert all(a > b for a, b in zip(lrs[warmup:], lrs[warmup + 1:])) and lrs[-1] > 0


def test_an_epoch_drops_the_last_incomplete_batch_but_a_small_set_still_makes_one():
    assert dassl_steps_per_epoch(208, 32) == 6          # 16 shots x 13 base classes, batch 32
    assert dassl_steps_per_epoch(13, 32) == 1 and dassl_steps_per_epoch(13, 1) == 13
    with pytest.raises(ValueError, match="images >= 1"):
        dassl_steps_per_epoch(0, 32)


def test_a_budget_in_epochs_runs_epochs_times_the_epoch_at_dassls_rates_with_sgd():
    setup = prepare(build_experiment(per_cell=3, cache_dir="off", method="coop", shots=2, steps=1, batch_size=8,
                                     lr=2e-3))
    train = TrainConfig(steps=1, batch_size=8, lr=2e-3, epochs=3, schedule="dassl", optimizer="sgd",
                        weight_decay=5e-4)
    setup.cfg.train = train
    per_epoch = dassl_steps_per_epoch(len(setup.split.train_idx), 8)
    assert effective_train(train, setup.split).steps == 3 * per_epoch
    r = run_method(setup, progress=False)
    assert [row["lr"] for row in r["history"]] == [dassl_epoch_lr(s // per_epoch, 3, 2e-3, 1e-5)
                                                   for s in range(3 * per_epoch)]
    assert r["train_config"]["steps"] == 3 * per_epoch and r["train_config"]["optimizer"] == "sgd"


def test_bad_budgets_and_schedules_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="set epochs"):
        TrainConfig(schedule="dassl").validate()
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="step").validate()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="adam").validate()
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=1, warmup_epochs=1).validate()
    with pytest.raises(ValueError, match="effective_train"):    # epochs set but the steps never derived from them
        learning_rate(0, TrainConfig(steps=10, epochs=3, schedule="dassl"))
