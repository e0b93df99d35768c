"""Pretrain MAE-AST or SSAST (no arguments: a tiny MAE-AST on the built-in toy corpus, a few minutes on a CPU).

Settings come from the defaults, then --recipe FILE.yaml, then the flags below, then --set key=value overrides
(e.g. --set optim.lr=3e-4 --set model.overrides.depth=6). Re-running the same command on the same run
directory resumes it. Many GPUs or machines: launch the same command with
`torchrun --nproc_per_node=K [--nnodes=N --node_rank=R --rdzv_endpoint=HOST:PORT] -m maebench pretrain ...`.
"""

from __future__ import annotations

import argparse

from maebench.config import MODEL_NAMES, MODEL_SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, help="model family and tokeniser (default mae_ast_patch)")
    parser.add_argument("--size", choices=MODEL_SIZES, help="model size (default tiny)")
    parser.add_argument("--data", metavar="PATH",
                        help="a .tsv manifest, an AST-style .json list or a directory of audio files "
                             "(default: the built-in toy corpus)")
    parser.add_argument("--recipe", metavar="FILE", help="YAML recipe (a path or a bundled name, e.g. demo_tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. optim.lr=3e-4 (repeatable)")
    parser.add_argument("--run-dir", metavar="DIR", help="where checkpoints and metrics go "
                        "(default runs/pretrain/<model>-<size>)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps in total")
    parser.add_argument("--batch-size", type=int, metavar="N", help="clips per optimizer step (all processes)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir even if its config differs (e.g. more steps)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run dir's checkpoints, metrics and config, then start again")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer blocks (train.compile=true)")
    parser.add_argument("--loader", choices=("torch", "fairseq2"),
                        help="data loader: torch (DataLoader worker processes, the default) or fairseq2 (its C++ "
                             "pipeline, threads in one process; the fairseq2 extra); both give the same batches")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the metrics as TensorBoard events to RUN/tensorboard/")
    parser.add_argument("--probe-every", type=int, metavar="N",
                        help="probe curve: score the encoder at step 0 and every N steps with the logreg probe on a "
                             "fixed subset of each --probe-tasks task, in a background process -> RUN/probes.jsonl")
    parser.add_argument("--probe-tasks", metavar="T1,T2",
                        help="tasks of the probe curve, as `maebench eval --task` names them (e.g. ks2,esc50 or "
                             "hear:PATH)")
    parser.add_argument("--probe-data", metavar="ROOT", help="dataset root of the probe tasks, ROOT/<task> holding "
                        "each (default: their toy look-alikes)")
    parser.add_argument("--probe-device", metavar="DEVICE",
                        help="torch device of the probe process (default cpu: the training GPU is left alone)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: the run's own count on resume, else $OMP_NUM_THREADS, else every "
                             "core this process may use; 1 is often faster on a busy shared machine)")
    parser.add_argument("--quiet", action="store_true", help="no progress output (summary only)")


def build_config(args: argparse.Namespace):
    """Defaults <- recipe <- flags <- --set."""
    from maebench.config import PretrainConfig, apply_overrides, load_recipe

    cfg = load_recipe(args.recipe) if args.recipe else PretrainConfig()
    flags = {
        "model.name": args.model, "model.size": args.size, "data.source": args.data, "run_dir": args.run_dir,
        "train.max_steps": args.max_steps, "train.batch_size": args.batch_size,
        "train.compile": "true" if args.compile else None, "data.loader": args.loader,
        "train.tensorboard": "true" if args.tensorboard else None, "train.probe_every": args.probe_every,
        "train.probe_tasks": args.probe_tasks, "train.probe_data": args.probe_data,
        "train.probe_device": args.probe_device,
    }
    cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in flags.items() if v is not None], origin="option")
    return apply_overrides(cfg, args.overrides)


def run(args: argparse.Namespace) -> int:
    from maebench.paths import cache_dir
    from maebench.trainer import train

    cfg = build_config(args)
    cache_dir()  # usable, or refused now: the run ends by writing the latest-run pointer there
    train(cfg, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, threads=args.threads)
    return 0
