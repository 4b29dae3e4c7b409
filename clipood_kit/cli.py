"""The `clipood-kit` command line: one small function per subcommand, each building the same config
objects the notebooks build."""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from clipood_kit.data import WORLD
from clipood_kit.methods import METHODS

if TYPE_CHECKING:                                # the CLI imports its commands' modules when they run
    from clipood_kit.studies.fanout import Runner


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already names it or there is none to name."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.const is True:
            return text
        return super()._get_help_string(action)


def _preset_note(field: str) -> str:
    """'(default: the preset's; tiny-world: VALUE)' for an experiment or training field."""
    from clipood_kit.engine.presets import get_preset
    exp = get_preset("tiny-world")
    value = getattr(exp.train, field) if hasattr(exp.train, field) else getattr(exp, field)
    return f"(default: the preset's; tiny-world: {value})"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-clip-world",
                   help="open_clip architecture (default: the embedded tiny-clip-world)")
    p.add_argument("--pretrained", default="default",
                   help="open_clip pretrained tag, a local checkpoint file, 'none' for random init, or "
                        "'default' (the shipped weights of the tiny model)")
    p.add_argument("--device", default="auto", help="'auto' (the GPU when present, else the CPU), 'cpu', 'cuda', 'cuda:1'")


def _pretrained(value: str) -> Optional[str]:
    return None if value.lower() == "none" else value


def cmd_pretrain(args) -> int:
    from clipood_kit.engine.pretrain import PretrainConfig, pretrain
    overrides = {k: v for k, v in (("steps", args.steps), ("groups", args.groups), ("group_size", args.group_size),
                                         ("seed", args.seed)) if v is not None}
    cfg = PretrainConfig(**overrides)
    card = pretrain(cfg, out=args.out, calibration_seeds=args.calibration)
    from clipood_kit.evaluation.zeroshot import format_table
    print(format_table(card["zeroshot_eval"]["accuracy"], "zero-shot accuracy (%)"))
    print(f"trained in {card['train_seconds']:.0f} s; weights: {card['weights_file']} ({card['file_bytes'] / 1e6:.2f} MB)")
    return 0


def cmd_clip_card(args) -> int:
    from clipood_kit.evaluation.card import format_card, run_card
    from clipood_kit.core.io import write_json
    card = run_card(args.model, _pretrained(args.pretrained), args.data, args.per_cell, args.seed, args.template,
                    args.device)
    print(format_card(card))
    if args.calibration:
        card["calibration"] = run_calibration(args.model, _pretrained(args.pretrained), args.data, args.calibration,
                                              args.ood_data or [], args.device)
    if args.json:
        write_json(args.json, card)
    return 0


def run_calibration(model, pretrained, data, seeds, ood_data, device) -> dict:
    """The calibration rows of `clip-card --calibration` (`evaluation.calibration`), printed; returns them."""
    from clipood_kit.data import WORLD, open_dataset
    from clipood_kit.data.far_ood import open_ood_sets
    from clipood_kit.evaluation import calibration as cal
    from clipood_kit.models.loader import load_clip
    loaded = load_clip(model, pretrained, device=device)
    loaded.model.eval()
    if data == WORLD:
        if ood_data:
            raise ValueError("--ood-data with the world: the world's calibration uses its own far-OOD sets "
                             "(glyphs, textures); pass --ood-data with --data FOLDER")
        rows = cal.world_calibration(loaded, seeds)
    else:
        dataset = open_dataset(data)
        far = open_ood_sets([], ood_data, 0, 0, [], id_data=dataset)
        rows = cal.summary([cal.dataset_task_rows(loaded, dataset, far, seed=s) for s in seeds], seeds)
    print(cal.format_rows(rows["mean"], seeds))
    return rows


def cmd_zeroshot(args) -> int:
    from clipood_kit.core.io import write_json
    from clipood_kit.evaluation.zeroshot import ZeroShotConfig, format_table, run_zeroshot
    cfg = ZeroShotConfig(model=args.model, pretrained=_pretrained(args.pretrained), data=args.data,
                         per_cell=args.per_cell, seed=args.seed, templates=args.template or None,
                         batch_size=args.batch_size, device=args.device)
    result = run_zeroshot(cfg)
    print(f"zero-shot {result['model_id']} on {result['dataset']['name']} "
          f"({len(result['dataset']['classes'])} classes, {result['dataset']['size']} images)")
    print(format_table(result["accuracy"]))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def cmd_data_check(args) -> int:
    from clipood_kit.core.io import write_json
    from clipood_kit.data.layouts import check, format_check
    from clipood_kit.engine.presets import PRESETS
    report = check(args.root, verify=not args.no_verify, presets=list(PRESETS))
    print(format_check(report))
    if args.json:
        write_json(args.json, report)
    return 1 if report["problems"] else 0


def cmd_export_world(args) -> int:
    from clipood_kit.data import export_world
    root = export_world(args.root, per_cell=args.per_cell, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote the world as a DomainBed-style tree to {root}")
    return 0


def _overrides(args) -> dict:
    """The builder's overrides (engine/builder.py) that this command's options give."""
    from clipood_kit.engine.builder import OVERRIDES
    names = {"template": "templates"}
    out = {names.get(k, k): v for k, v in vars(args).items() if names.get(k, k) in OVERRIDES}
    return {k: v for k, v in out.items() if v is not None}


def _experiment_from_args(args):
    """The preset, then the explicit options, then every --set KEY=VALUE (validated before any work): the one
    builder, `engine.builder.build_experiment`."""
    from clipood_kit.engine.builder import build_experiment
    return build_experiment(args.preset, args.set or [], **_overrides(args))


def config_summary(exp) -> str:
    """Three lines: model and data, method with its parts' settings, training (the full config is in results.json)."""
    import dataclasses
    parts = "; ".join(f"{p.kind}(" + ", ".join(f"{f.name}={getattr(p, f.name)!r}" for f in dataclasses.fields(p)) + ")"
                      for p in exp.method.parts())
    t = exp.train
    batch = f"{t.batch_per_domain} per domain" if t.batch_per_domain else str(t.batch_size)
    return (f"model {exp.model} ({exp.pretrained}) on {exp.data}, protocol {exp.protocol}, device {exp.device}\n"
            f"method {exp.method.name}: {parts.replace('(, ', '(').replace('()', '')}\n"
            f"train {t.steps} steps, batch {batch}, lr {t.lr:g}, weight decay {t.weight_decay:g}, "
            f"precision {t.precision}, seed {t.seed}")


def cmd_finetune(args) -> int:
    from clipood_kit.engine.runs import run
    from clipood_kit.engine.scoring import flat_labels
    from clipood_kit.evaluation.zeroshot import format_table
    exp = _experiment_from_args(args)
    result = run(exp, args.out, resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after,
                 on_prepared=lambda setup: print(config_summary(exp), flush=True))
    if not result["completed"]:
        print(f"stopped after step {result['history'][-1]['step']}; resume with the same command and --resume")
        return 0
    print(format_table(flat_labels(result["headline"]), f"{exp.method.name} ({result['primary']}) accuracy (%)"))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out}/results.json, history.json and the trained weights")
    return 0


def cmd_sweep(args) -> int:
    from clipood_kit.studies.sweeps import run_sweep
    if args.method is None:
        args.method = "ce" if args.kind == "wise" else "clipood"
    exp = _experiment_from_args(args)
    print(config_summary(exp))
    run_sweep(args.kind, exp, args.values, args.betas or [], args.out, runner=_runner(args), overwrite=args.overwrite)
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0


def cmd_methods(args) -> int:
    """Every registered method with its parts and their defaults; then every part."""
    import dataclasses
    from clipood_kit.methods import METHODS, part_configs
    for name, m in METHODS.items():
        print(f"{name:<16}{m.describe()}")
    print("\nparts (compose your own with --method 'mms+context-kl+ema'; set fields with --set PART.FIELD=VALUE):")
    for kind, cls in part_configs().items():
        defaults = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        print(f"  {kind:<14}{cls.role:<12}{cls.summary}" + (f"\n  {'':<26}{defaults}" if defaults else ""))
    return 0


def _bench_overrides(cfg, args):
    """The bench's experiment with this command's model, data and training options and --set lines (the one
    builder, `engine.builder.apply_overrides`)."""
    from clipood_kit.engine.builder import apply_overrides
    cfg.experiment = apply_overrides(cfg.experiment, args.set or [], **_overrides(args))
    return cfg


def cmd_demo(args) -> int:
    from clipood_kit.studies.bench import demo_bench
    return _run_and_print(_bench_overrides(demo_bench(args.seeds), args), args.out, _runner(args), args.overwrite)


def _run_and_print(cfg, out, runner: "Runner", overwrite: bool = False) -> int:
    from clipood_kit.studies.bench import run_bench
    from clipood_kit.viz.report import text_table
    results = run_bench(cfg, out, runner=runner, overwrite=overwrite)
    print(text_table(results))
    for label, runs in results["runs"].items():
        for note in sorted({n for r in runs for n in r.get("notes", [])}):
            print(f"note ({label}): {note}")
    print(f"wrote {out}/results.json and {out}/report.html in {results['seconds']:.0f} s")
    return 0


def cmd_compare(args) -> int:
    from clipood_kit.studies.bench import compare_bench
    return _run_and_print(_bench_overrides(compare_bench(args.seeds, fast=args.fast, ablation=args.ablation), args),
                          args.out, _runner(args), args.overwrite)


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    """The options that build an experiment (finetune, sweep): a preset, then overrides and --set."""
    p.add_argument("--preset", default="tiny-world", help="experiment preset: tiny-world (default) or an official CLIPood recipe, clipood-{domain-shift,base-to-new,in-the-wild}-DATASET (see clipood_kit/presets.py)")
    p.add_argument("--model", default=None, help=f"open_clip architecture {_preset_note('model')}")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag, a local checkpoint file, 'none' or "
                   f"'default' (the tiny model's shipped weights) {_preset_note('pretrained')}")
    p.add_argument("--device", default=None, help="'auto' (the GPU when present), 'cpu', 'cuda', 'cuda:1' "
                   f"{_preset_note('device')}")
    p.add_argument("--data", default=None, help="'world' or the root of a DomainBed-style folder tree "
                   f"{_preset_note('data')}")
    p.add_argument("--per-cell", type=int, default=None, help=f"world: images per (style, class) {_preset_note('per_cell')}")
    p.add_argument("--ood-data", action="append", metavar="[near:|far:][NAME=]FOLDER",
                   help="an OOD set to score: a folder of images (any depth), as the MCM code reads iNaturalist, SUN, "
                        "Places or Textures; far-OOD unless 'near:'; 'mcm:ROOT' adds MCM's four far-OOD sets, "
                        "'imagenet10:ROOT' / 'imagenet20:ROOT' MCM's near-OOD sets; repeat (default: none; the world "
                        "adds its own far-OOD sets, glyphs and textures)")
    p.add_argument("--eval-data", action="append", metavar="KIND:ROOT",
                   help="an ImageNet variant scored as an unseen domain with ImageNet's classifier (imagenetv2, "
                        "imagenet-sketch, imagenet-a, imagenet-r; -A and -R among their 200 classes), for --data "
                        "imagenet:ROOT; repeat (default: none)")
    p.add_argument("--protocol", choices=["domain-shift", "base-to-new", "in-the-wild", "open-world"], default=None,
                   help=f"what is trained and tested {_preset_note('protocol')}")
    p.add_argument("--source", action="append", help="source (training) domain; repeat (default: the world's photo "
                                                     "and sketch; a folder's every domain but the last)")
    p.add_argument("--target", action="append", help="held-out domain (the others are sources); repeat (default: "
                                                     "every domain that is not a source)")
    p.add_argument("--shots", type=int, default=None,
                   help="k images per class and source domain (default: the preset's; tiny-world: all images)")
    p.add_argument("--template", action="append", help="prompt template with {} (repeat for an ensemble; default: "
                   "the preset's, else the model's ensemble, `zeroshot.default_templates`)")
    p.add_argument("--method", default=None,
                   help=f"a registered method ({', '.join(METHODS)}) or parts joined by '+' "
                        f"(see `clipood-kit methods`) (default: the preset's; tiny-world: clipood)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any field: PART.FIELD (mms.margin_lambda=0.2, bma.alpha=0.1), train.FIELD or an "
                        "experiment field; repeat (default: none)")
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps {_preset_note('steps')}")
    p.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate {_preset_note('lr')}")
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch size {_preset_note('batch_size')}")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], default=None,
                   help=f"mixed precision of forward and backward {_preset_note('precision')}")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of batches, augmentation and the split {_preset_note('seed')}")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data loader workers (default: min(8, cores) on CUDA, none on a CPU)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"write a resumable checkpoint every N steps {_preset_note('checkpoint_every')}")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    """The model, data and training options of demo and compare: the experiment's, less the preset and method
    (a bench runs its own list of methods)."""
    p.add_argument("--model", default=None, help="open_clip architecture (default: the bench's, the tiny CLIP)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag, a local checkpoint file, 'none' "
                   "or 'default' (default: the bench's, the tiny model's shipped weights)")
    p.add_argument("--device", default=None, help="'auto' (the GPU when present), 'cpu', 'cuda', 'cuda:1' "
                   "(default: auto)")
    p.add_argument("--data", default=None, help="'world' (default) or the root of a DomainBed-style folder tree")
    p.add_argument("--per-cell", type=int, default=None, help="world: images per (style, class) (default: the bench's, 30)")
    p.add_argument("--ood-data", action="append", metavar="[near:|far:][NAME=]FOLDER",
                   help="an OOD set to score: a folder of images (any depth), as the MCM code reads iNaturalist, SUN, "
                        "Places or Textures; far-OOD unless 'near:'; 'mcm:ROOT' adds MCM's four far-OOD sets, "
                        "'imagenet10:ROOT' / 'imagenet20:ROOT' MCM's near-OOD sets; repeat (default: none; the world "
                        "adds its own far-OOD sets, glyphs and textures)")
    p.add_argument("--protocol", choices=["domain-shift", "base-to-new", "in-the-wild", "open-world"], default=None,
                   help="what is trained and tested (default: the bench's, open-world)")
    p.add_argument("--source", action="append", help="source (training) domain; repeat (default: the world's photo "
                                                     "and sketch; a folder's every domain but the last)")
    p.add_argument("--target", action="append", help="held-out domain; repeat (default: every non-source domain)")
    p.add_argument("--template", action="append", help="prompt template with {} (repeat for an ensemble; default: "
                   "the model's ensemble, `zeroshot.default_templates`)")
    p.add_argument("--steps", type=int, default=None, help="override the fine-tuning steps, e.g. for fast runs (default: the bench's, 120)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the bench's, 1e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the bench's, 32)")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], default=None,
                   help="mixed precision of forward and backward (default: the bench's, no)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default ~/.cache/clipood-kit/features; 'off' to disable)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set an experiment or training field (train.FIELD, FIELD); repeat (default: none)")


def _add_fanout_args(p: argparse.ArgumentParser) -> None:
    """How the independent runs are run (`studies.fanout`): serially here, on local worker processes, or on Slurm."""
    p.add_argument("--executor", choices=["serial", "local", "slurm"], default="serial",
                   help="serial: one run after another in this process; local: worker processes on this machine; "
                        "slurm: jobs on a Slurm cluster (submitit)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (local: processes; slurm: the array's "
                                                          "parallelism)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: serial, this "
                   "process's; otherwise the cores divided among the workers)")
    p.add_argument("--job-folder", default=None, help="submitit's folder for the jobs' files and logs (default: a "
                   "temporary folder, removed afterwards)")
    p.add_argument("--slurm", action="append", metavar="KEY=VALUE", default=[],
                   help="a submitit Slurm parameter, e.g. slurm_partition=gpu, gpus_per_node=1, cpus_per_task=8; "
                        "repeat")


def _runner(args):
    from clipood_kit.engine.settings import split_setting
    from clipood_kit.studies.fanout import Runner
    slurm = {}
    for item in args.slurm:
        key, value = split_setting(item)
        slurm[key] = int(value) if value.isdigit() else value
    if slurm and args.executor != "slurm":
        raise ValueError("--slurm parameters need --executor slurm")
    return Runner(args.executor, args.workers, args.threads, args.job_folder, slurm)


def cmd_study(args) -> int:
    from clipood_kit.engine.builder import apply_overrides
    from clipood_kit.studies.ood_study import STUDY_METHODS, StudyConfig, run_study, study_experiment, text_table
    exp = apply_overrides(study_experiment(fast=args.fast), args.set or [], **_overrides(args))
    cfg = StudyConfig(experiment=exp, methods=args.methods or STUDY_METHODS, shots=args.shot_counts, seeds=args.seeds,
                      official_budgets=not args.fast)
    results = run_study(cfg, args.out, _runner(args), overwrite=args.overwrite)
    for kind in ("far", "near"):
        print(text_table(results, kind))
    for f in results["findings"]:
        print(f"- {'holds' if f['holds'] else 'does not hold'}: {f['claim']} ({f['evidence']})")
    print(f"wrote {args.out}/results.json and {args.out}/report.html in {results['seconds']:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipood-kit", description=__doc__, formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Help))

    p = sub.add_parser("pretrain", help="pretrain the embedded tiny CLIP on the world (writes data/)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the shipped recipe's)")
    p.add_argument("--groups", type=int, default=None, help="groups per batch, each one style and colour "
                                                             "(default: the shipped recipe's)")
    p.add_argument("--group-size", type=int, default=None, help="images per group (default: the shipped recipe's)")
    p.add_argument("--seed", type=int, default=None, help="pretraining seed (default: the shipped recipe's)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: data/tiny-clip-world.safetensors)")
    p.add_argument("--calibration", type=int, nargs="*", default=[0, 1, 2], metavar="SEED",
                   help="seeds of the calibration rows the model card records (`evaluation.calibration`, about "
                        "20 s a seed); none to skip")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("clip-card", help="the CLIP-likeness card of a model on a dataset (context awareness, "
                                         "class text structure, temperature, modality gap)")
    _add_model_args(p)
    p.add_argument("--data", default=WORLD, help="'world' or the root of a DomainBed-style folder tree")
    p.add_argument("--per-cell", type=int, default=20, help="world: images per (style, class)")
    p.add_argument("--seed", type=int, default=1, help="world: seed of the images")
    p.add_argument("--template", action="append", help="prompt template with {} (repeat for an ensemble; default: the model's ensemble, `zeroshot.default_templates`)")
    p.add_argument("--json", type=Path, help="write the card here as JSON (default: print only)")
    p.add_argument("--calibration", type=int, nargs="+", metavar="SEED",
                   help="also the calibration rows (zero-shot base/new, CoOp at its official schedule, zero-shot "
                        "MCM on far-OOD sets) over these seeds, beside the papers' values (`evaluation.calibration`; "
                        "default: none, the card only)")
    p.add_argument("--ood-data", action="append", metavar="[far:][NAME=]FOLDER",
                   help="a far-OOD image folder for the calibration rows on --data FOLDER; repeat (default: none)")
    p.set_defaults(func=cmd_clip_card)

    p = sub.add_parser("zeroshot", help="zero-shot accuracy per domain")
    _add_model_args(p)
    p.add_argument("--data", default=WORLD, help="'world' or the root of a DomainBed-style folder tree")
    p.add_argument("--per-cell", type=int, default=40, help="world: images per (style, class)")
    p.add_argument("--seed", type=int, default=1, help="world: seed of the evaluation images")
    p.add_argument("--template", action="append", help="prompt template with {} (repeat for an ensemble; default: the model's ensemble, `zeroshot.default_templates`)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--json", type=Path, help="write the results here as JSON (default: print only)")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("finetune", help="fine-tune with one method under one protocol (writes a run folder)")
    _add_experiment_args(p)
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this step (default: run every step)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out (refused when "
                   "any setting differs from the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run (or a stopped one) in --out")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sweep", help="accuracy and OOD over lambda (runs, cached), BMA's (alpha, beta) or the WiSE-FT "
                                     "mix (one run, no retraining); JSON and a report")
    p.add_argument("kind", choices=["lambda", "bma", "wise"], help="what to sweep")
    p.add_argument("--values", type=float, nargs="+", required=True,
                   help="lambda values, BMA alphas, or WiSE-FT mixes")
    p.add_argument("--betas", type=float, nargs="+", help="BMA betas (default: the alphas)")
    _add_experiment_args(p)
    _add_fanout_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and report.html")
    p.add_argument("--overwrite", action="store_true", help="replace finished results in --out")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("methods", help="list the methods, their parts and the parts' defaults")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="the main job: zero-shot, CE, ablations and CLIPood on the world + report")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for results.json and report.html")
    p.add_argument("--overwrite", action="store_true", help="replace finished results in --out")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (mean and std over them)")
    _add_bench_args(p)
    _add_fanout_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compare", help="every method x (domains, classes, OOD with MCM), mean and std over seeds")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="folder for results.json and report.html")
    p.add_argument("--overwrite", action="store_true", help="replace finished results in --out")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (mean and std over them)")
    p.add_argument("--fast", action="store_true", help="tiny data and 8 steps (tests)")
    p.add_argument("--ablation", default=None, metavar="METHOD",
                   help="instead of all methods: CE, METHOD and its ablated variants (ogen) (default: all methods)")
    _add_bench_args(p)
    _add_fanout_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("study", help="a published study on the bench: ood-after-finetuning (Ming & Li, IJCV 2023: "
                                     "methods x scores x near/far OOD x shots x seeds); JSON and a report")
    p.add_argument("name", choices=["ood-after-finetuning"], help="the study")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="folder for results.json and report.html")
    p.add_argument("--overwrite", action="store_true", help="replace finished results in --out")
    p.add_argument("--methods", nargs="+", default=None, help="methods ('zero-shot' or registered names; default: "
                   "the study's, STUDY_METHODS in clipood_kit/studies/ood_study.py: zero-shot, prompt learning and "
                   "OGEN, the adapters, full fine-tuning)")
    p.add_argument("--shots", dest="shot_counts", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="the shot counts: images per class and source domain")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (mean and std over them)")
    p.add_argument("--fast", action="store_true", help="tiny data and 4 steps per run, official budgets off (tests)")
    _add_bench_args(p)
    _add_fanout_args(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("lessons", help="class-room tools: precompute what the lesson notebooks train, or write the "
                                       "student versions (solutions stripped, self-checks kept)")
    p.add_argument("action", choices=["prepare", "student", "app"],
                   help="prepare: run every lesson once in its default setting into --cache; student: write the "
                        "student notebooks (otter-grader) into --out; app: write the app versions (exercises "
                        "removed) of the lessons served with Voila into --out, and install their Voila template")
    p.add_argument("--cache", default="runs/lessons-cache", help="prepare: the result store to fill")
    p.add_argument("--workers", type=int, default=1, help="prepare: lessons run at once, each in its own kernel "
                                                          "(2 on 2 idle cores)")
    p.add_argument("--out", default=None, help="student: where the student notebooks go (default runs/student); "
                                                "app: where the app notebooks go (default runs/apps)")
    p.add_argument("--autograder", action="store_true", help="student: also write autograder versions (solutions "
                                                             "and hidden tests) under OUT/autograder")
    p.add_argument("--notebooks", type=Path, default=None, help="the instructor notebooks (default: the repository's "
                                                                "notebooks/)")
    p.add_argument("--overwrite", action="store_true", help="student, app: replace notebooks in --out that differ "
                                                            "from the new ones (a lecturer's edits)")
    p.set_defaults(func=cmd_lessons)

    p = sub.add_parser("data", help="check a dataset folder: its layout, classes, splits, images and problems")
    p.add_argument("action", choices=["check"], help="the action")
    p.add_argument("root", help="KIND:ROOT (e.g. oxfordpets:/data, pacs:/data) or a folder (its layout detected)")
    p.add_argument("--no-verify", action="store_true", help="do not decode every image (faster on large sets)")
    p.add_argument("--json", default=None, help="write the report here as JSON (default: print only)")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("export-world", help="write the world as a DomainBed-style image folder")
    p.add_argument("root", type=Path, help="the folder to write (root/DOMAIN/CLASS/*.png)")
    p.add_argument("--per-cell", type=int, default=40, help="images per (style, class)")
    p.add_argument("--seed", type=int, default=0, help="seed of the images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in root")
    p.set_defaults(func=cmd_export_world)
    return parser


def cmd_lessons(args) -> int:
    from clipood_kit.lessons.build import app_versions, prepare_store, student_versions
    if args.action == "app":
        paths = app_versions(Path(args.out or "runs/apps"), args.notebooks, overwrite=args.overwrite)
        for path in paths:
            print(path)
        print(f"serve one as an app: voila {paths[0]}")
    elif args.action == "prepare":
        times = prepare_store(Path(args.cache), args.notebooks, workers=args.workers)
        for name, seconds in times.items():
            print(f"{name}: {seconds:.1f} s")
        print(f"the lessons' results are in {args.cache}: set CLIPOOD_KIT_CACHE={args.cache} for the students "
              f"(read-only is enough), and CLIPOOD_KIT_NO_TRAINING=1 to refuse any training on the server")
    else:
        for path in student_versions(Path(args.out or "runs/student"), args.notebooks, autograder=args.autograder,
                                     overwrite=args.overwrite):
            print(path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from clipood_kit.models.loader import PretrainedUnavailableError
    from clipood_kit.engine.training import NonFiniteLossError
    from clipood_kit.lessons.build import LessonFailed
    from clipood_kit.studies.fanout import JobFailed
    # user errors get one line; anything else (a bug, torch's own RuntimeErrors) keeps its traceback
    user_errors = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                   FileExistsError, PretrainedUnavailableError, NonFiniteLossError, LessonFailed, JobFailed)
    try:
        return args.func(args)
    except user_errors as e:
        print(f"clipood-kit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
