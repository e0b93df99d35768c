"""Benchmark the feature cache: the cached `linear` probe vs the same probe on a live frozen upstream.

Both runs train the SUPERB head with the same seed, batches and step budget on the same task (toy KS2 by default).
The cached run starts from an empty cache, so its time includes extracting every split once; the live run (the
s3prl way) recomputes frame-level features of every training batch and every dev/test evaluation. Targets: a
speed-up of at least 5x and test accuracies within 1 point (the two models are mathematically identical).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="ks2", help="task to benchmark on (default ks2)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (default: the toy task)")
    parser.add_argument("--upstream", default="mae_ast_patch:tiny", metavar="PATH|PRESET",
                        help="upstream to probe (default mae_ast_patch:tiny)")
    parser.add_argument("--steps", type=int, default=300,
                        help="optimiser steps for both runs (default 300, the toy linear probe's budget)")
    parser.add_argument("--eval-every", type=int, default=50, help="dev evaluation interval (default 50)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate (default 1e-3, so a short toy run learns something)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys
    import tempfile
    import time
    from pathlib import Path

    import torch
    from rich.console import Console

    from maebench.downstream.datasets import load_task
    from maebench.downstream.evaluate import default_device, resolve_upstream
    from maebench.downstream.probes import linear_probe, resolve_settings

    quiet = args.quiet or not sys.stderr.isatty()
    task = load_task(args.task, args.data)
    fold = task.folds[0]
    settings = resolve_settings("linear", task, {"max_steps": args.steps, "eval_every": args.eval_every,
                                                 "lr": args.lr})
    upstream, identity = resolve_upstream(args.upstream)
    device = torch.device(args.device) if args.device else default_device()
    upstream.to(device).eval()
    console = Console()
    console.print(f"bench cache: {task.name} ({len(fold.train)}/{len(fold.dev)}/{len(fold.test)} clips), "
                  f"{identity['name']}, {args.steps} steps x batch {settings.batch_size}, lr {args.lr:g}, {device}")

    with torch.inference_mode():  # warm up (lazy initialisation, kernels) so neither run pays for it
        upstream(torch.zeros(2, upstream.sample_rate, device=device),
                 torch.full((2,), upstream.sample_rate, device=device))

    with tempfile.TemporaryDirectory(prefix="maebench-bench-cache-") as cold_cache:
        start = time.perf_counter()
        cached = linear_probe(upstream, task, fold, seed=args.seed, settings=settings, quiet=quiet,
                              cache_options={"root": Path(cold_cache),
                                             "upstream_fingerprint": identity["fingerprint"]})
        cached_s = time.perf_counter() - start

    start = time.perf_counter()
    live_score, live_dev = live_linear_probe(upstream, task, fold, settings=settings, seed=args.seed, quiet=quiet)
    live_s = time.perf_counter() - start

    _report(console, args, task, fold, settings, cached, cached_s, (live_score, live_dev), live_s)
    return 0


def _report(console, args: argparse.Namespace, task, fold, settings, cached, cached_s: float,
            live: tuple[float, float | None], live_s: float) -> None:
    """The comparison table, the upstream forward counts and the verdict on both targets."""
    from maebench.tables import new_table, print_table

    live_score, live_dev = live
    table = new_table(f"cached vs live linear probe ({task.name}, {task.metric} %)",
                      ("run", "wall s", "extract s", "test", "dev"))
    table.add_row("cached (cold cache)", f"{cached_s:.1f}", f"{cached.timings['extract_s']:.1f}",
                  f"{cached.score:.2f}", f"{cached.dev_score or 0:.2f}")
    table.add_row("live upstream (s3prl way)", f"{live_s:.1f}", "-", f"{live_score:.2f}", f"{live_dev or 0:.2f}")
    print_table(table, console)
    evaluations = len(range(args.eval_every, args.steps + 1, args.eval_every)) + (args.steps % args.eval_every != 0)
    live_clips = (args.steps * settings.batch_size * settings.grad_accum
                  + evaluations * len(fold.dev) + len(fold.test))
    console.print(f"upstream clip forwards: cached {len(fold.train) + len(fold.dev) + len(fold.test)}, "
                  f"live {live_clips}")
    from maebench.commands.bench_pretrain import relative_speed

    speedup, gap = live_s / cached_s, abs(live_score - cached.score)
    console.print(f"speed-up: cached run {relative_speed(speedup)} vs live (target >= 5x faster: "
                  f"{'met' if speedup >= 5 else 'MISSED'}); "
                  f"test {task.metric} gap {gap:.2f} points (target <= 1: {'met' if gap <= 1 else 'MISSED'})")


def live_linear_probe(upstream, task, fold, *, settings, seed: int, quiet: bool = True
                      ) -> tuple[float, float | None]:
    """The SUPERB linear probe computed the s3prl way: every training batch and every evaluation runs the frozen
    upstream and feeds frame-level features to the head. Returns (test score, best dev score)."""
    import torch

    from maebench.downstream.batching import eval_max_samples, pad_batch, read_for_eval
    from maebench.downstream.device import device_autocast, module_device
    from maebench.downstream.heads import SuperbHead
    from maebench.downstream.metrics import task_score
    from maebench.downstream.probes import predict, train_superb_head
    from maebench.downstream.probes.training import balanced_weights, eval_labels, loss_name, targets_for

    device = module_device(upstream)
    max_samples, min_samples = eval_max_samples(upstream, task), upstream.min_input_samples()
    upstream.eval()
    with torch.no_grad():
        wav = read_for_eval(task, fold.train[0], max_samples, min_samples)[None].to(device)
        shape = upstream(wav, torch.tensor([wav.shape[1]], device=device)).hidden_states
    torch.manual_seed(seed)  # the same head initialisation as the cached probe
    head = SuperbHead(len(shape), shape[0].shape[-1], task.num_classes, settings.projector_dim).to(device)

    def train_logits(indices: torch.Tensor) -> torch.Tensor:
        wavs, lens = pad_batch([read_for_eval(task, fold.train[int(i)], max_samples, min_samples) for i in indices])
        with torch.no_grad(), device_autocast(device):  # the cached run extracts at this precision too
            features = upstream(wavs.to(device), lens.to(device))
        return head.forward_frames([h.float() for h in features.hidden_states], features.lens.to(device))

    def dev_score() -> float:
        logits = predict(upstream, head, task, fold.dev, quiet=True)
        return task_score(task.metric, logits, eval_labels([ex.label for ex in fold.dev], task))

    best_dev, _ = train_superb_head(
        head, num_train=len(fold.train), train_targets=targets_for([ex.label for ex in fold.train], task),
        train_logits=train_logits, dev_score=dev_score if fold.dev else None, settings=settings,
        loss=loss_name(settings, task), seed=seed, quiet=quiet, description=f"live linear {task.name}",
        sample_weights=balanced_weights(task, settings, len(fold.train)),  # as the cached run draws them (KS1)
    )
    logits = predict(upstream, head, task, fold.test, quiet=quiet, description=f"live test {task.name}")
    return task_score(task.metric, logits, eval_labels([ex.label for ex in fold.test], task)), best_dev
