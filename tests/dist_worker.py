"""Run a tiny CLIPood fine-tune on N CPU processes (gloo) through Accelerate's debug_launcher.

    python tests/dist_worker.py N OUT_FILE [METHOD]

The main process saves the evaluated encoder states to OUT_FILE (safetensors). With METHOD ogen every process
also saves its feature generator to OUT_FILE.rank<r> (the generator is the method's own module, outside DDP).

The encoder runs in float64: AdamW divides each gradient by its running RMS, so for parameters whose true
gradient is zero (the key bias of attention pooling: softmax ignores it) float32 summation noise, which
differs between one process and two, becomes lr-sized steps. In float64 that noise is far below Adam's eps,
and the comparison tests the data sharding and gradient averaging themselves.
"""
import sys

import torch


def experiment(method):
    from clipood_kit.methods import MethodConfig
    from clipood_kit.protocols import ExperimentConfig
    from clipood_kit.training import TrainConfig
    return ExperimentConfig(per_cell=3, method=MethodConfig(name=method, ogen_warmup=0.4),
                            train=TrainConfig(steps=5, batch_size=8, lr=1e-4, seed=3))


def train(out_file, method_name):
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from clipood_kit import protocols
    from clipood_kit.io import save_weights
    built = []

    def build_and_keep(cfg):
        built.append(protocols_build(cfg))
        return built[-1]

    protocols_build, protocols.build_method = protocols.build_method, build_and_keep
    exp = experiment(method_name)
    setup = protocols.prepare(exp)
    setup.loaded.model.double()
    accelerator = Accelerator(cpu=True)
    result = protocols.run_method(setup, exp.method, exp.train, progress=False, accelerator=accelerator)
    for module in built[0].trainable_modules():
        save_weights(f"{out_file}.rank{accelerator.process_index}", dict(module.state_dict()))
    if accelerator.is_main_process:
        flat = {f"{name}/{k}": v for name, state in result["states"].items() for k, v in state.items()}
        flat["losses"] = torch.tensor([r["loss"] for r in result["history"]], dtype=torch.float64)
        save_weights(out_file, flat, metadata={"processes": str(accelerator.num_processes)})


if __name__ == "__main__":
    from accelerate import debug_launcher
    debug_launcher(train, args=(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "clipood"),
                   num_processes=int(sys.argv[1]))
