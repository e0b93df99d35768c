"""The pretraining loop, readable top to bottom (nanoGPT style): no framework, every step in plain sight.

setup (process group, run directory, data, model, optimizer, schedule) -> optional resume -> loop over optimizer
steps (grad accumulation, bf16 autocast on CUDA, clipping) -> metrics, checkpoints, progress -> summary.

Checks that need the host (non-finite loss, logging, checkpoints) happen only every `log_every` / `ckpt_every`
steps, so the GPU is not stalled by a sync on every step. A checkpoint is written only after its window's loss and
gradient norms were checked finite: a diverged run stops with a clear message and its last checkpoint is good.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maebench import distributed as ddp
from maebench import run_checkpoint as ckpt
from maebench.atomic import write_text_atomic
from maebench.config import PretrainConfig, check_required, config_hash, to_yaml, validate
from maebench.errors import MaebenchError

SAMPLE_RATE = 16000
NEXT_COMMAND = "maebench eval --task ks2"
MAX_SKIPPED_LISTED = 1000  # bad files remembered by name in trainer.pt (all are counted)


@dataclass
class TrainResult:
    """What a finished run reports (rank 0 has the gathered values)."""

    run_dir: Path
    checkpoint: Path | None
    start_step: int
    steps: int
    wall_s: float
    clips_per_s: float
    peak_memory_bytes: int
    last_loss: float
    num_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of its logging window)


# ---------------------------------------------------------------------------------------------------- components


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The configured upstream (preset + overrides), ready for `pretrain_loss`.

    SSAST pads or cuts its pretraining input to `target_frames`; unless overridden, that is the clip length rounded
    up to whole 16-frame patches (10.24 s clips -> 1024 frames, the published setting), so short clips are not
    padded to 10 s of silence.
    """
    from maebench import upstream

    overrides = dict(cfg.model.overrides)
    if cfg.model.name.startswith("ssast") and "target_frames" not in overrides:
        frames = 1 + (round(cfg.data.clip_seconds * SAMPLE_RATE) - 400) // 160
        overrides["target_frames"] = -(-frames // 16) * 16
    model = upstream.load(f"{cfg.model.name}:{cfg.model.size}", **overrides)
    if not hasattr(model, "pretrain_loss"):
        raise MaebenchError(f"model {cfg.model.name} cannot be pretrained (no pretrain_loss)")
    return model


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer_class = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Multiplier of optim.lr before optimizer step `step` (0-based): linear warm-up from 0, then decay to end_lr."""
    o, total = cfg.optim, cfg.train.max_steps
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    end = o.end_lr / o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.schedule == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return end + (1.0 - end) * (1.0 - progress) ** o.power  # polynomial (power 1 = linear), as fairseq


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def _apply_optim_config(optimizer, scheduler, cfg: PretrainConfig, step: int) -> None:
    """Loading a state dict restores the saved hyperparameters; the configured ones win (same values on a plain
    resume, the new ones after `--resume` with a changed config)."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group.update(initial_lr=o.lr, lr=o.lr * lr_factor(step, cfg), betas=o.betas, eps=o.eps,
                     weight_decay=o.weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_threads() -> int:
    """Intra-op threads for CPU training: the cores not already busy (at least 1).

    OpenMP threads spin-wait at every barrier; on cores shared with other busy processes one step can take 50x
    longer with 2 threads than with 1. An explicit OMP_NUM_THREADS (torchrun sets 1) is respected.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def resolve_precision(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32): auto = bf16 on CUDA, fp32 on CPU."""
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


class BatchStream:
    """Endless micro-batches from the resumable loader, tracking (epoch, batch_in_epoch) for checkpoints.

    The loader is rebuilt at each epoch boundary and on resume; building its iterator must not move the global
    torch RNG (the DataLoader draws a base seed from it), or a resumed run would drift from an uninterrupted one.
    """

    def __init__(self, items, cfg: PretrainConfig, micro_batch: int, env: ddp.DistEnv, state: ckpt.TrainerState):
        self.items, self.cfg, self.micro_batch, self.env, self.state = items, cfg, micro_batch, env, state
        self._iterator = None

    def _open(self):
        from maebench.pretrain_data import ResumableBatchSampler, build_pretrain_loader

        per_epoch = ResumableBatchSampler(len(self.items), self.micro_batch,
                                          world_size=self.env.world_size).batches_per_epoch()
        if self.state.batch_in_epoch > per_epoch:  # --resume with fewer clips or bigger batches: epoch is over
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        loader = build_pretrain_loader(
            self.items, clip_seconds=self.cfg.data.clip_seconds, batch_size=self.micro_batch,
            num_workers=self.cfg.data.num_workers, seed=self.cfg.train.seed, rank=self.env.rank,
            world_size=self.env.world_size, epoch=self.state.epoch, batch_in_epoch=self.state.batch_in_epoch,
            pin_memory=self.env.device.type == "cuda",
        )
        with torch.random.fork_rng(devices=[]):
            return iter(loader)

    def next(self):
        for _ in range(2):
            if self._iterator is None:
                self._iterator = self._open()
            batch = next(self._iterator, None)
            if batch is not None:
                self.state.batch_in_epoch += 1
                return batch
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            self._iterator = None
        raise MaebenchError("the data loader produced no batches: use more clips or a smaller --batch-size")


class SkippedFiles:
    """Bad files met so far, counted once each: ranks note them locally, rank 0 merges them at sync points."""

    def __init__(self, state: ckpt.TrainerState) -> None:
        self.state = state
        self.seen = set(state.skipped)
        self.overflow = state.num_skipped - len(state.skipped)  # counted before a resume but not listed
        self.pending: list[str] = []

    def add(self, paths: list[str]) -> None:
        self.pending.extend(p for p in paths if p not in self.seen and p not in self.pending)

    def gather(self, env: ddp.DistEnv) -> None:
        """Collective: every rank calls it; rank 0's state then holds the merged record."""
        everyone = ddp.all_gather_objects(self.pending, env)
        self.pending = []
        if not env.is_main:
            return
        for path in (p for paths in everyone for p in paths):
            if path in self.seen:
                continue
            self.seen.add(path)
            if len(self.state.skipped) < MAX_SKIPPED_LISTED:
                self.state.skipped.append(path)
            else:
                self.overflow += 1
        self.state.num_skipped = len(self.state.skipped) + self.overflow


class Reporter:
    """Rank 0's outputs while training: rich progress bar on a TTY, plain lines otherwise, nothing when quiet."""

    def __init__(self, env: ddp.DistEnv, quiet: bool, total: int, start: int) -> None:
        self.enabled = env.is_main and not quiet
        self.progress = None
        if self.enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} clips/s"),
                TextColumn("ETA"), TimeRemainingColumn(),
            )
            self.task = self.progress.add_task("pretrain", total=total, completed=start, loss="-", rate="-")
            self.progress.start()

    def advance(self, step: int) -> None:
        if self.progress:
            self.progress.update(self.task, completed=step)

    def log(self, record: dict[str, Any]) -> None:
        if self.progress:
            self.progress.update(self.task, completed=record["step"], loss=f"{record['loss']:.4f}",
                                 rate=f"{record['clips_per_s']:.1f}")
        elif self.enabled:
            print(f"step {record['step']:>7d}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                  f"{record['clips_per_s']:.1f} clips/s", flush=True)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


# ---------------------------------------------------------------------------------------------------- the loop


def train(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> TrainResult:
    """Pretrain as configured (alone or under torchrun); checkpoints and metrics go to the run directory."""
    check_required(cfg)
    validate(cfg)
    env = ddp.setup(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, env, resume=resume, overwrite=overwrite, quiet=quiet)
    finally:
        torch.set_num_threads(threads)
        ddp.teardown(env)


def _train(cfg: PretrainConfig, env: ddp.DistEnv, *, resume: bool, overwrite: bool, quiet: bool) -> TrainResult:
    from maebench.pretrain_data import list_audio

    device, t = env.device, cfg.train
    run_dir = cfg.default_run_dir()
    identity = config_hash(cfg)
    per_step = t.batch_size // t.grad_accum
    if t.batch_size % (env.world_size * t.grad_accum):
        unit = env.world_size * t.grad_accum
        raise MaebenchError(f"train.batch_size={t.batch_size} must divide evenly over {env.world_size} process(es) x "
                            f"{t.grad_accum} accumulation step(s): choose a multiple of {unit}")
    micro_batch = per_step // env.world_size
    autocast_dtype = resolve_precision(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(cpu_threads())

    # ---- data first (bad paths fail before anything is written); rank 0 may build the toy corpus for everyone
    items = _main_first(env, lambda: list_audio(cfg.data.source, quiet=quiet))
    if not env.is_main:
        items = list_audio(cfg.data.source, quiet=True)

    # ---- run directory: resume, refuse or overwrite (rank 0 decides and may delete; the others follow)
    decision = _main_first(env, lambda: ckpt.decide_run_dir(run_dir, identity, resume=resume, overwrite=overwrite))
    decision = ddp.broadcast_from_main(decision, env)
    if env.is_main:
        for message in decision.messages:
            print(message, flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / ckpt.CONFIG_FILE, to_yaml(cfg))

    # ---- model, optimizer, schedule
    seed_everything(t.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    state = ckpt.TrainerState()
    seed_everything(t.seed + 1_000_003 * env.rank)  # rank-specific masking and dropout streams

    # ---- resume: weights, optimizer, schedule, data position and every RNG stream
    if decision.resume_from is not None:
        saved = ckpt.load_trainer_state(decision.resume_from)
        ckpt.load_model_weights(model, decision.resume_from)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _apply_optim_config(optimizer, scheduler, cfg, saved["step"])  # --resume with new settings uses them
        state = ckpt.TrainerState(saved["step"], saved["epoch"], saved["batch_in_epoch"], list(saved["skipped"]),
                                  saved["num_skipped"])
        rng = saved["rng"]
        if len(rng) == env.world_size:
            ckpt.restore_rng(rng[env.rank], device)
        else:
            seed_everything(t.seed + 1_000_003 * env.rank + state.step)
            if env.is_main:
                print(f"note: checkpoint written by {len(rng)} process(es), now {env.world_size}: data order is kept, "
                      "random streams are reseeded", flush=True)
    start_step = state.step
    if env.is_main:
        _truncate_metrics(run_dir / ckpt.METRICS_FILE, start_step)

    step_module: nn.Module = ddp.PretrainStep(model)
    if t.compile:
        step_module = torch.compile(step_module)
    step_module = ddp.wrap_ddp(step_module, env)
    batches = BatchStream(items, cfg, micro_batch, env, state)
    skipped = SkippedFiles(state)
    reporter = Reporter(env, quiet, t.max_steps, start_step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # ---- the loop
    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    window = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, loss count, clips, non-finite flag
    window_stats: dict[str, torch.Tensor] = {}
    window_start, run_start = time.perf_counter(), time.perf_counter()
    clips_total = 0
    losses: list[tuple[int, float]] = []
    last_loss, last_checkpoint = float("nan"), decision.resume_from
    grad_norm = torch.zeros((), device=device)
    try:
        while state.step < t.max_steps:
            for micro in range(t.grad_accum):
                batch = batches.next()
                skipped.add(batch.skipped)
                wavs, lens, weight = batch.wavs, batch.lens, 1.0
                if wavs.shape[0] == 0:  # every clip bad: run a zero-weight dummy so DDP ranks stay in step
                    wavs = torch.zeros(1, round(cfg.data.clip_seconds * SAMPLE_RATE))
                    lens, weight = torch.tensor([wavs.shape[1]]), 0.0
                wavs = wavs.to(device, non_blocking=True)
                lens = lens.to(device, non_blocking=True)
                last_micro = micro == t.grad_accum - 1
                no_sync = step_module.no_sync() if env.is_distributed and not last_micro else contextlib.nullcontext()
                with no_sync:
                    with autocast():
                        loss, stats = step_module(wavs, lens)
                    (loss * (weight / t.grad_accum)).backward()
                detached = loss.detach().double()
                window[0] += detached * weight
                window[1] += weight
                window[2] += batch.wavs.shape[0]
                window[3] += (~torch.isfinite(detached)).double()
                for name, value in stats.items():
                    window_stats[name] = window_stats.get(name, 0.0) + value.detach().double() * weight
            # clip_grad_norm_ also measures the norm; max_norm=inf measures without clipping
            max_norm = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            window[3] += (~torch.isfinite(grad_norm)).double()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            reporter.advance(state.step)

            log_now = state.step % t.log_every == 0
            save_now = state.step % t.ckpt_every == 0 or state.step == t.max_steps
            if not (log_now or save_now):
                continue
            # ---- host sync point: check the window, log it, maybe checkpoint
            totals = ddp.all_reduce_sum(window.clone(), env)
            stat_names = sorted(window_stats)
            stat_totals = ddp.all_reduce_sum(torch.stack([window_stats[n] for n in stat_names]), env) \
                if stat_names else None
            if totals[3].item() > 0:
                good = f"{last_checkpoint}" if last_checkpoint else "none was written yet"
                raise MaebenchError(
                    f"loss or gradients became NaN/inf before step {state.step}; stopped without saving. "
                    f"Last good checkpoint: {good}. Lower optim.lr (or check the data) and rerun with --resume"
                )
            elapsed = time.perf_counter() - window_start
            clips = int(totals[2].item())
            clips_total += clips
            last_loss = totals[0].item() / max(totals[1].item(), 1e-12)
            record = {
                "step": state.step, "epoch": state.epoch, "loss": last_loss,
                **({n: stat_totals[i].item() / max(totals[1].item(), 1e-12) for i, n in enumerate(stat_names)}
                   if stat_totals is not None else {}),
                "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm), "clips": clips,
                "clips_per_s": clips / max(elapsed, 1e-9), "elapsed_s": time.perf_counter() - run_start,
            }
            losses.append((state.step, last_loss))
            if env.is_main:
                with open(run_dir / ckpt.METRICS_FILE, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            reporter.log(record)
            window.zero_()
            window_stats = {}
            window_start = time.perf_counter()

            if save_now:
                skipped.gather(env)
                last_checkpoint = _save(run_dir, cfg, env, model, optimizer, scheduler, state, identity)
    finally:
        reporter.close()

    # ---- summary
    skipped.gather(env)
    wall = time.perf_counter() - run_start
    if state.step == start_step and env.is_main:
        print(f"nothing to do: {run_dir} is already at step {state.step} (train.max_steps={t.max_steps})")
    peak = _peak_memory(device)
    if env.is_distributed:
        peak = int(ddp.all_reduce_sum(torch.tensor([peak], dtype=torch.float64, device=device), env).item())
    result = TrainResult(
        run_dir=run_dir, checkpoint=last_checkpoint, start_step=start_step, steps=state.step, wall_s=wall,
        clips_per_s=clips_total / max(wall, 1e-9), peak_memory_bytes=peak, last_loss=last_loss,
        num_skipped=state.num_skipped, skipped=list(state.skipped), losses=losses,
    )
    if env.is_main:
        _print_summary(result, env, device)
        from maebench.paths import record_latest_pretrain_run

        record_latest_pretrain_run(run_dir)
    return result


# ---------------------------------------------------------------------------------------------------- helpers


def _main_first(env: ddp.DistEnv, work):
    """Run `work` on rank 0 only; a user error there is raised on every rank (instead of leaving them waiting)."""
    result, error = None, None
    if env.is_main:
        try:
            result = work()
        except MaebenchError as err:
            error = str(err)
    error = ddp.broadcast_from_main(error, env)
    if error:
        raise MaebenchError(error)
    return result


def _save(run_dir: Path, cfg: PretrainConfig, env: ddp.DistEnv, model: nn.Module, optimizer, scheduler,
          state: ckpt.TrainerState, identity: str) -> Path:
    """Gather every rank's RNG streams, then rank 0 writes; all ranks wait for it."""
    rngs = ddp.all_gather_objects(ckpt.capture_rng(env.device), env)
    path = run_dir / ckpt.CHECKPOINTS / ckpt.step_dir_name(state.step)
    if env.is_main:
        provenance = {"trained_by": "maebench pretrain", "step": state.step, "config_hash": identity,
                      "model": f"{cfg.model.name}:{cfg.model.size}"}
        path = ckpt.save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                                    rng=rngs, config_hash=identity, world_size=env.world_size,
                                    provenance=provenance, keep_last=cfg.train.keep_last)
    ddp.barrier(env)
    return path


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _print_summary(result: TrainResult, env: ddp.DistEnv, device: torch.device) -> None:
    done = result.steps - result.start_step
    memory = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    scope = f" (sum over {env.world_size} processes)" if env.is_distributed else ""
    where = f"{device.type}" + ("" if device.type == "cuda" else f", {torch.get_num_threads()} thread(s)")
    loss = f"last loss {result.last_loss:.4f}" if math.isfinite(result.last_loss) else "no new loss"
    print(f"done: step {result.steps} ({done} this run, {where}) in {_duration(result.wall_s)}, "
          f"{result.clips_per_s:.1f} clips/s, {memory} {result.peak_memory_bytes / 2**20:.0f} MiB{scope}, {loss}")
    if result.num_skipped:
        listed = ", ".join(result.skipped[:5])
        more = " ..." if result.num_skipped > 5 else ""
        print(f"skipped {result.num_skipped} unreadable, empty or too-short file(s): {listed}{more}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
        print(f"next: {NEXT_COMMAND}   (evaluates this run: it is now the latest pretraining run)")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past the checkpoint we start from (they belong to steps being redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
