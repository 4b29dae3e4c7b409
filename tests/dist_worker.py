"""Tiny runs on N CPU processes (gloo) through Accelerate's debug_launcher, several in one launch.

    python tests/dist_worker.py N OUT_DIR JOB [JOB ...]     # JOB: a METHOD or `evaluate`
    python tests/dist_worker.py N OUT_FILE diverge

A METHOD (a tiny CLIPood-style fine-tune) may carry a variant: `ogen:no-dropout` (OGEN's generator without attention
dropout). The jobs run one after the other in the same processes (a launch's processes start once: each costs an
interpreter, torch and the prepared world), each with its own seeds, so one launch's JOB equals another launch's.

The main process saves each method's evaluated encoder states to OUT_DIR/JOB.safetensors. A method with a module
of its own (OGEN's generator, the toy probe) also has every process save that module to OUT_DIR/JOB.safetensors.rank<r>
(prepared by Accelerate like the model: DDP averages its gradients, so every process must hold the same module).
`evaluate` saves the zero-shot model's features to OUT_DIR/evaluate.safetensors and its scores beside them (.json).

The encoder runs in float64: AdamW divides each gradient by its running RMS, so for parameters whose true
gradient is zero (the key bias of attention pooling: softmax ignores it) float32 summation noise, which
differs between one process and two, becomes lr-sized steps. In float64 that noise is far below Adam's eps,
and the comparison tests the data sharding and gradient averaging themselves.
"""
import sys

import torch


def experiment(method):
    from clipood_kit.engine.experiment import ExperimentConfig
    from clipood_kit.methods import METHODS, CEConfig, MethodConfig, compose
    if method == "probe-ce":                      # the toy part with its own module (tests/toy_method.py)
        sys.path.insert(0, __file__.rsplit("/", 1)[0])
        from toy_method import ProbeConfig
        METHODS["probe-ce"] = MethodConfig("probe-ce", CEConfig(), (ProbeConfig(),))
    from clipood_kit.engine.settings import set_method_fields
    from clipood_kit.engine.training import TrainConfig
    name, _, variant = method.partition(":")     # "ogen-ft:no-dropout": the generator without attention dropout
    m = compose(name)
    if m.part("ogen") is not None:
        m = set_method_fields(m, {"ogen.warmup": 0.4, "self-distill.start": 0.4,
                                  "ogen.dropout": 0.0 if variant == "no-dropout" else 0.1})
    return ExperimentConfig(per_cell=3, method=m, train=TrainConfig(steps=5, batch_size=8, lr=1e-4, seed=3))


def train(out_file, method_name):
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.core.io import save_weights
    from clipood_kit.methods import Method
    from clipood_kit.engine.runs import build_task
    from clipood_kit.engine.training import accelerator_settings, fine_tune
    exp = experiment(method_name)
    setup = prepare(exp)
    setup.zero_shot.loaded.model.double()
    method = Method(exp.method)
    accelerator = Accelerator(**accelerator_settings(torch.device("cpu"), exp.train.precision,
                                                     method.every_parameter_every_step))
    out = fine_tune(build_task(setup, method, exp.train), progress=False, accelerator=accelerator)
    own = {f"{part.cfg.kind}.{name}/{k}": v.detach() for part, name, module in method.training_modules()
           for k, v in accelerator.unwrap_model(module).state_dict().items()}
    if own:
        save_weights(f"{out_file}.rank{accelerator.process_index}", own)
    if accelerator.is_main_process:
        flat = {f"{name}/{k}": v for name, state in out.states.items() for k, v in state.items()}
        flat["losses"] = torch.tensor([r["loss"] for r in out.history], dtype=torch.float64)
        save_weights(out_file, flat, metadata={"processes": str(accelerator.num_processes)})




def evaluate(out_file):
    """The zero-shot model's features and scores on the evaluation images, under this launch's processes."""
    torch.set_num_threads(1)
    from accelerate import PartialState
    from clipood_kit.engine.experiment import ExperimentConfig, prepare
    from clipood_kit.core.io import save_weights
    from clipood_kit.engine.encoding import encode
    from clipood_kit.engine.scoring import evaluate_state
    import json
    setup = prepare(ExperimentConfig(per_cell=3, eval_batch_size=7))
    enc = encode(setup, setup.zero_shot.state)
    scores = evaluate_state(setup, setup.zero_shot.state)
    if PartialState().is_main_process:
        save_weights(out_file, {k: v for k, v in enc.items()})
        with open(f"{out_file}.json", "w") as f:
            json.dump(scores, f)


def diverge(out_file):
    """Process 1 alone gets a NaN loss at step 2: every process must stop with NonFiniteLossError (none hangs)."""
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from clipood_kit.engine.experiment import prepare
    from clipood_kit.methods import Method
    from clipood_kit.engine.runs import build_task
    from clipood_kit.engine.training import NonFiniteLossError, fine_tune
    exp = experiment("ce")
    setup = prepare(exp)
    accelerator = Accelerator(cpu=True)
    method = Method(exp.method)
    original = method.loss

    def loss(batch):
        value, metrics = original(batch)
        if batch.step == 1 and accelerator.process_index == 1:
            value = value * float("nan")
        return value, metrics

    method.loss = loss
    try:
        fine_tune(build_task(setup, method, exp.train), progress=False, accelerator=accelerator)
        outcome = "finished"
    except NonFiniteLossError as e:
        outcome = str(e).split(":")[0]
    with open(f"{out_file}.rank{accelerator.process_index}", "w") as f:
        f.write(outcome)


def jobs(out_dir, names):
    """Every job of `names` in turn, into `out_dir` (see the module docstring)."""
    from pathlib import Path
    for name in names:
        out = str(Path(out_dir) / f"{name}.safetensors")
        if name == "evaluate":
            evaluate(out)
        else:
            train(out, name)


if __name__ == "__main__":
    from accelerate import debug_launcher
    if sys.argv[3] == "diverge":
        debug_launcher(diverge, args=(sys.argv[2],), num_processes=int(sys.argv[1]))
    else:
        debug_launcher(jobs, args=(sys.argv[2], sys.argv[3:]), num_processes=int(sys.argv[1]))
