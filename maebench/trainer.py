"""The pretraining loop, readable top to bottom (nanoGPT style): no framework, every step in plain sight.

`train` = `Pretrainer.setup` (process group, data, run directory, model, optimizer, schedule, optional resume) ->
`train_step` per optimizer step (grad accumulation, bf16 autocast on CUDA, clipping) -> `end_window` at each
logging step (metrics, progress) and `save_checkpoint` at each checkpoint step -> `summary`.

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
from maebench.config import PretrainConfig, check_required, config_hash, model_overrides, to_yaml, validate
from maebench.errors import MaebenchError
from maebench.paths import record_latest_pretrain_run
from maebench.progress import progress_bar
from maebench.upstream import checkpoint as layout
from maebench.upstream.blocks import compile_blocks
from maebench.upstream.frontend import SAMPLE_RATE, SSAST_FBANK, num_frames

SKIP_FILES = ckpt.SKIP_FILES
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

    overrides = model_overrides(cfg)
    if cfg.model.name.startswith("ssast") and "target_frames" not in overrides:
        frames = num_frames(round(cfg.data.clip_seconds * SAMPLE_RATE), SSAST_FBANK)
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
        return (step // o.warmup_stairs * o.warmup_stairs if o.warmup_stairs else step + 1) / o.warmup_steps
    if o.schedule in ("constant", "plateau"):  # plateau: its cuts are the scheduler's (maebench.plateau)
        return 1.0
    end = o.end_lr / o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.schedule == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return end + (1.0 - end) * (1.0 - progress) ** o.power  # polynomial (power 1 = linear), as fairseq


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    o = cfg.optim
    if o.schedule == "plateau":
        from maebench.plateau import PlateauLR

        return PlateauLR(optimizer, lambda step: lr_factor(step, cfg), factor=o.plateau_factor,
                         patience=o.plateau_patience, mode=o.plateau_mode)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def _apply_optim_config(optimizer, scheduler, cfg: PretrainConfig, step: int) -> None:
    """Loading a state dict restores the saved hyperparameters; the configured ones win (same values on a plain
    resume, the new ones after `--resume` with a changed config)."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group.update(initial_lr=o.lr, lr=o.lr * scheduler.lr_lambdas[0](step), betas=o.betas, eps=o.eps,
                     weight_decay=o.weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_threads(requested: int | None = None, saved: int | None = None) -> int:
    """Intra-op threads for CPU training: `requested` (--threads), else an explicit OMP_NUM_THREADS (torchrun sets
    1), else `saved` (the count a resumed run was started with), else the cores this process may use.

    Never from the machine's load: the thread count changes reduction order, so it must not depend on what else
    runs, or the same command would give different weights and a resume would not continue exactly. On cores
    shared with other busy processes OpenMP's spin-waiting can make many threads slow: pass --threads 1 there.
    """
    if requested is not None:
        if requested < 1:
            raise MaebenchError(f"--threads {requested}: must be at least 1")
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    if saved:
        return int(saved)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_precision(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32): auto = bf16 on CUDA, fp32 on CPU."""
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def resolve_compile(cfg: PretrainConfig, device: torch.device) -> bool:
    """Whether to compile the model's blocks: auto = on CUDA only (on CPU the compiler's C++ build takes minutes
    and the steady-state gain is small; `maebench bench compile` measures both)."""
    return device.type == "cuda" if cfg.train.compile == "auto" else bool(cfg.train.compile)


class BatchStream:
    """Endless micro-batches from the resumable loader, tracking (epoch, batch_in_epoch) for checkpoints.

    The loader is rebuilt at each epoch boundary and on resume; building its iterator must not move the global
    torch RNG (the DataLoader draws a base seed from it), or a resumed run would drift from an uninterrupted one.
    """

    def __init__(self, items, cfg: PretrainConfig, micro_batch: int, env: ddp.DistEnv, state: ckpt.TrainerState):
        self.items, self.cfg, self.micro_batch, self.env, self.state = items, cfg, micro_batch, env, state
        self._iterator = None

    def _open(self):
        from maebench.pretrain_data import ResumableBatchSampler, build_pretrain_loader, loader_options

        per_epoch = ResumableBatchSampler(len(self.items), self.micro_batch,
                                          world_size=self.env.world_size).batches_per_epoch()
        if self.state.batch_in_epoch > per_epoch:  # --resume with fewer clips or bigger batches: epoch is over
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        if self.cfg.data.loader == "fairseq2":  # the same batches from fairseq2's pipeline (threads, one process)
            from maebench.fairseq2_data import build_fairseq2_loader as build
        else:
            build = build_pretrain_loader
        loader = build(
            self.items, **loader_options(self.cfg), batch_size=self.micro_batch,
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
    """Rank 0's outputs while training: the progress bar on a terminal, plain lines otherwise, nothing when quiet.

    The bar counts clips (optimizer steps x train.batch_size), so its rate column is clips/s; the step is a field.
    """

    def __init__(self, env: ddp.DistEnv, quiet: bool, cfg: PretrainConfig, start_step: int) -> None:
        self.enabled = env.is_main and not quiet
        self.max_steps, self.clips_per_step = cfg.train.max_steps, cfg.train.batch_size
        self.bar = None
        if self.enabled and sys.stdout.isatty():
            bar = progress_bar(unit="clips", fields=("step", "loss"))
            if not bar.disable:  # stderr is not a terminal: plain lines instead
                self.bar = bar
                self.task = bar.add_task("pretrain", total=self.max_steps * self.clips_per_step,
                                         completed=start_step * self.clips_per_step, step=self._step(start_step),
                                         loss="-")

    def __enter__(self) -> Reporter:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None

    def _step(self, step: int) -> str:
        return f"{step}/{self.max_steps}"

    def advance(self, step: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=step * self.clips_per_step, step=self._step(step))

    def log(self, record: dict[str, Any]) -> None:
        if self.bar:
            self.bar.update(self.task, loss=f"{record['loss']:.4f}")
        elif self.enabled:
            print(f"step {record['step']:>7d}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                  f"{record['clips_per_s']:.1f} clips/s", flush=True)


class Window:
    """Sums over the optimizer steps since the last host sync, kept on the device (no .item() per step)."""

    def __init__(self, device: torch.device, start_step: int = 0) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, loss weight, clips, non-finite
        self.stats: dict[str, torch.Tensor] = {}
        self.start = time.perf_counter()
        self.first_step = start_step + 1
        # per micro-batch: (step, item indices) and a device flag "loss or the step's gradients not finite", read
        # only when the window is not finite, to name the files of the first bad batch
        self.batches: list[tuple[int, list[int]]] = []
        self.flags: list[torch.Tensor] = []

    def add_loss(self, loss: torch.Tensor, stats: dict[str, torch.Tensor], weight: float, clips: int,
                 step: int = 0, indices: list[int] | None = None) -> None:
        detached = loss.detach().double()
        self.sums[0] += detached * weight
        self.sums[1] += weight
        self.sums[2] += clips
        bad = (~torch.isfinite(detached)).double()
        self.sums[3] += bad
        self.batches.append((step, list(indices or [])))
        self.flags.append(bad)
        for name, value in stats.items():
            self.stats[name] = self.stats.get(name, 0.0) + value.detach().double() * weight

    def add_grad_norm(self, grad_norm: torch.Tensor, micro_batches: int = 1) -> None:
        bad = (~torch.isfinite(grad_norm)).double()
        self.sums[3] += bad
        for i in range(1, min(micro_batches, len(self.flags)) + 1):  # the step's micro-batches share the blame
            self.flags[-i] = self.flags[-i] + bad

    def first_bad_batch(self) -> tuple[int, list[int]] | None:
        """(step, item indices) of this process's first micro-batch with a non-finite loss or gradient."""
        if not self.flags:
            return None
        flags = torch.stack(self.flags).tolist()
        bad = [i for i, flag in enumerate(flags) if flag > 0]
        if not bad:
            return None
        step = self.batches[bad[0]][0]
        return step, [index for i in bad if self.batches[i][0] == step for index in self.batches[i][1]]

    def reduce(self, env: ddp.DistEnv) -> tuple[list[float], dict[str, float]]:
        """Collective: the window summed over every rank, as (sums, {stat: sum}) on the host."""
        sums = ddp.all_reduce_sum(self.sums.clone(), env).tolist()
        names = sorted(self.stats)
        if not names:
            return sums, {}
        stats = ddp.all_reduce_sum(torch.stack([self.stats[n] for n in names]), env).tolist()
        return sums, dict(zip(names, stats, strict=True))

    def reset(self, step: int) -> None:
        self.sums.zero_()
        self.stats = {}
        self.start = time.perf_counter()
        self.first_step = step + 1
        self.batches, self.flags = [], []


class TensorBoardLog:
    """Rank 0's TensorBoard events in RUN/tensorboard/ (train.tensorboard): every number of each metrics.jsonl
    record (loss and its parts, lr, grad norm, clips/s, ...) at its step. On resume, events past the checkpoint are
    purged (`purge_step`), as the metrics.jsonl lines of the steps being redone are."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / ckpt.TENSORBOARD_DIR), purge_step=start_step + 1)

    def log(self, record: dict[str, Any]) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"pretrain/{name}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def check_optional_packages(cfg: PretrainConfig) -> None:
    """What the config asks for beyond the core install (the fairseq2 loader, TensorBoard) is importable, or a
    one-line MaebenchError saying how to install it, before anything is written."""
    if cfg.data.loader == "fairseq2":
        from maebench.fairseq2_data import require_fairseq2

        require_fairseq2()
    if cfg.train.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401  (raises ImportError without the tensorboard package)
        except ImportError:
            raise MaebenchError("--tensorboard (train.tensorboard) needs the tensorboard package: pip install "
                                "tensorboard (the fairseq2 extra brings it), or leave TensorBoard off") from None


# ---------------------------------------------------------------------------------------------------- the loop


def train(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
          threads: int | None = None, set_latest: bool = True) -> TrainResult:
    """Pretrain as configured (alone or under torchrun); checkpoints and metrics go to the run directory.

    `threads`: CPU intra-op threads (default: see cpu_threads; recorded in each checkpoint, reused on resume).
    `set_latest`: the run becomes the one `maebench eval` uses without --upstream, and the summary says so (a
    stand-alone `maebench pretrain`); a pipeline's stages pass False.
    """
    check_required(cfg)
    validate(cfg)
    env = ddp.setup(cfg.train.device)
    previous_threads = torch.get_num_threads()
    run = None
    try:
        run = Pretrainer(cfg, env, quiet=quiet, threads=threads, set_latest=set_latest)
        run.setup(resume=resume, overwrite=overwrite)
        return run.train()
    finally:
        if run is not None:
            run.release()
        torch.set_num_threads(previous_threads)
        ddp.teardown(env)


class Pretrainer:
    """One process's part of a pretraining run: `setup`, then `train` (which ends with `summary`)."""

    def __init__(self, cfg: PretrainConfig, env: ddp.DistEnv, *, quiet: bool = False,
                 threads: int | None = None, set_latest: bool = True) -> None:
        t = cfg.train
        if t.batch_size % (env.world_size * t.grad_accum):
            unit = env.world_size * t.grad_accum
            raise MaebenchError(f"train.batch_size={t.batch_size} must divide evenly over {env.world_size} "
                                f"process(es) x {t.grad_accum} accumulation step(s): choose a multiple of {unit}")
        self.cfg, self.env, self.quiet, self.device = cfg, env, quiet, env.device
        self.run_dir = cfg.default_run_dir()
        self.identity = config_hash(cfg)
        self.micro_batch = t.batch_size // t.grad_accum // env.world_size
        self.autocast_dtype = resolve_precision(cfg, env.device)
        self.losses: list[tuple[int, float]] = []  # (step, mean loss of its logging window)
        self.last_loss, self.clips_total = float("nan"), 0
        self.requested_threads, self.threads = threads, None
        self.lock: ckpt.RunLock | None = None
        self.tensorboard: TensorBoardLog | None = None
        self.set_latest = set_latest  # see train()

    def release(self) -> None:
        """Drop the run directory's lock (rank 0 holds it from setup to the end of the run); close TensorBoard."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ---- setup

    def setup(self, *, resume: bool, overwrite: bool) -> None:
        """Data first (bad paths fail before anything is written), then the run directory, model, optimizer,
        schedule and, when resuming, every piece of saved state."""
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        check_optional_packages(self.cfg)
        from maebench.plateau import split_validation
        from maebench.pretrain_data import list_audio

        items, self.valid_items = split_validation(self._list_data(), self.cfg.data.valid_clips, self.cfg.train.seed)
        if self.cfg.data.valid_source:
            self.valid_items += list_audio(self.cfg.data.valid_source, quiet=True)
        self.valid_record: dict[str, Any] = {}
        resume_from = self._decide_run_dir(resume=resume, overwrite=overwrite)
        saved = ckpt.load_trainer_state(resume_from) if resume_from is not None else None
        self._set_threads(saved)
        self._build()
        if saved is not None:
            self._resume(resume_from, saved)
        self.start_step, self.last_checkpoint = self.state.step, resume_from
        if self.env.is_main:
            with _writing(self.run_dir, resume_from):
                _truncate_metrics(self.run_dir / layout.METRICS_FILE, self.start_step)
            if self.cfg.train.tensorboard:
                with _writing(self.run_dir, resume_from):
                    self.tensorboard = TensorBoardLog(self.run_dir, self.start_step)
        if resolve_compile(self.cfg, self.device):
            compile_blocks(self.model)  # in place: the loop, layerdrop and masking stay eager (see its docstring)
        self.step_module = ddp.wrap_ddp(ddp.PretrainStep(self.model), self.env)
        self.batches = BatchStream(items, self.cfg, self.micro_batch, self.env, self.state)
        self.skipped = SkippedFiles(self.state)
        self.grad_norm = torch.zeros((), device=self.device)
        self.window = Window(self.device, self.start_step)
        self.skip_files = read_skip_files(self.run_dir, quiet=self.quiet or not self.env.is_main)

    def _list_data(self) -> list:
        """The training clips; rank 0 lists them first (and may build the toy corpus for everyone)."""
        from maebench.pretrain_data import list_audio

        source = self.cfg.data.source
        items = _main_first(self.env, lambda: list_audio(source, quiet=self.quiet))
        return items if self.env.is_main else list_audio(source, quiet=True)

    def _decide_run_dir(self, *, resume: bool, overwrite: bool) -> Path | None:
        """Claim the run directory (rank 0: refuse foreign files, take its lock), then resume, refuse or
        overwrite (rank 0 decides and may delete; the others follow); the checkpoint to resume from, if any."""

        def claim() -> ckpt.RunDirDecision:
            with _writing(self.run_dir, None):
                ckpt.check_run_dir(self.run_dir)
                self.lock = ckpt.RunLock(self.run_dir)
                decision = ckpt.decide_run_dir(self.run_dir, self.identity, resume=resume, overwrite=overwrite,
                                               config=self.cfg)
                for message in decision.messages:
                    print(message, flush=True)
                write_text_atomic(self.run_dir / layout.RUN_CONFIG_FILE, to_yaml(self.cfg))
            return decision

        decision = ddp.broadcast_from_main(_main_first(self.env, claim), self.env)
        return decision.resume_from

    def _set_threads(self, saved: dict[str, Any] | None) -> None:
        """CPU intra-op threads: deterministic (see cpu_threads), the resumed run's count unless told otherwise."""
        if self.device.type == "cuda":
            return
        before = saved.get("cpu_threads") if saved else None
        self.threads = cpu_threads(self.requested_threads, before)
        torch.set_num_threads(self.threads)
        if not self.env.is_main or self.quiet:
            return
        if before and before != self.threads:
            print(f"note: {self.threads} CPU thread(s); this run was started with {before}, so the resumed steps may "
                  f"differ from an uninterrupted run in the last bits (pass --threads {before} to match)", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if self.threads > 1 and load >= self.threads:  # a hint only: the count never depends on the load
            print(f"note: the machine is busy (load {load:.1f}); {self.threads} CPU threads may run much slower "
                  "than --threads 1 here", flush=True)

    def _build(self) -> None:
        """Model, optimizer and schedule: identical initial weights on every rank, then rank-specific masking and
        dropout streams."""
        seed = self.cfg.train.seed
        seed_everything(seed)
        self.model = build_model(self.cfg)
        self._save_init()
        self.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
        self.state = ckpt.TrainerState()
        seed_everything(seed + 1_000_003 * self.env.rank)

    def _save_init(self) -> None:
        """RUN/init/: the weights step 0 starts from, the baseline of this run's evaluations (rank 0 writes)."""
        cfg = self.cfg
        provenance = {"trained_by": "maebench pretrain", "random_init_of": self.run_dir.name, "step": 0,
                      "seed": cfg.train.seed, "model": f"{cfg.model.name}:{cfg.model.size}"}

        def write() -> None:
            with _writing(self.run_dir, None):
                ckpt.save_init(self.run_dir, self.model, provenance)

        _main_first(self.env, write)

    def _resume(self, checkpoint: Path, saved: dict[str, Any]) -> None:
        """Weights, optimizer, schedule, data position and every RNG stream of `checkpoint` (`saved`: its
        trainer.pt)."""
        ckpt.load_model_weights(self.model, checkpoint)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        _apply_optim_config(self.optimizer, self.scheduler, self.cfg, saved["step"])  # --resume with new settings
        self.state = ckpt.TrainerState(saved["step"], saved["epoch"], saved["batch_in_epoch"], list(saved["skipped"]),
                                       saved["num_skipped"])
        rng, env = saved["rng"], self.env
        if len(rng) == env.world_size:
            ckpt.restore_rng(rng[env.rank], self.device)
            return
        seed_everything(self.cfg.train.seed + 1_000_003 * env.rank + self.state.step)
        if env.is_main:
            print(f"note: checkpoint written by {len(rng)} process(es), now {env.world_size}: data order is kept, "
                  "random streams are reseeded", flush=True)

    # ---- the loop

    def train(self) -> TrainResult:
        """Optimizer steps up to train.max_steps; the host syncs only at the end of a logging window."""
        t = self.cfg.train
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with Reporter(self.env, self.quiet, self.cfg, self.start_step) as reporter:
            self.run_start = self.window.start = time.perf_counter()
            while self.state.step < t.max_steps:
                self.train_step()
                reporter.advance(self.state.step)
                save_now = self.state.step % t.ckpt_every == 0 or self.state.step == t.max_steps
                if self._check_plateau() or save_now or self.state.step % t.log_every == 0:
                    reporter.log(self.end_window())
                    if save_now:
                        self.save_checkpoint()
        if self.env.is_main:
            self._draw_reconstruction()
        return self.summary()

    def _draw_reconstruction(self) -> None:
        """RUN/reconstruction.png (maebench.reconstruction): rank 0, when training is over; a failure is a note."""
        figure = self.run_dir / layout.RUN_RECONSTRUCTION
        if self.last_checkpoint is None or (self.state.step == self.start_step and figure.exists()):
            return
        from maebench.reconstruction import write_run_figure

        try:
            write_run_figure(self.run_dir, self.cfg.data.source, self.cfg.data.clip_seconds)
        except (MaebenchError, OSError, RuntimeError, ValueError) as err:  # the run itself is done and saved
            print(f"note: no {figure.name} ({err})", flush=True)
            return
        if not self.quiet:
            print(f"reconstruction figure: {figure}", flush=True)

    def train_step(self) -> None:
        """One optimizer step: grad_accum micro-batches forward and backward, clipping, the update, the schedule."""
        accum = self.cfg.train.grad_accum
        for micro in range(accum):
            self._micro_step(last=micro == accum - 1)
        # clip_grad_norm_ also measures the norm; max_norm=inf measures without clipping
        max_norm = self.cfg.optim.clip_grad_norm if self.cfg.optim.clip_grad_norm > 0 else float("inf")
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.window.add_grad_norm(self.grad_norm, micro_batches=accum)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _micro_step(self, *, last: bool) -> None:
        """Forward and backward of one micro-batch; DDP all-reduces the gradients on the last one only."""
        batch = self.batches.next()
        if self.skip_files:
            batch = batch.without(self.batches.items, self.skip_files)
        self.skipped.add(batch.skipped)
        wavs, lens, weight = batch.wavs, batch.lens, 1.0
        if wavs.shape[0] == 0:  # every clip bad: run a zero-weight dummy so DDP ranks stay in step
            wavs = torch.zeros(1, round(self.cfg.data.clip_seconds * SAMPLE_RATE))
            lens, weight = torch.tensor([wavs.shape[1]]), 0.0
        wavs = wavs.to(self.device, non_blocking=True)
        lens = lens.to(self.device, non_blocking=True)
        no_sync = self.step_module.no_sync() if self.env.is_distributed and not last else contextlib.nullcontext()
        with no_sync:
            with self._autocast():
                loss, stats = self.step_module(wavs, lens)
            (loss * (weight / self.cfg.train.grad_accum)).backward()
        self.window.add_loss(loss, stats, weight, clips=batch.wavs.shape[0], step=self.state.step + 1,
                             indices=batch.indices)

    def _check_plateau(self) -> bool:
        """SSAST's schedule: every optim.plateau_every steps a held-out check may cut the lr (maebench.plateau)."""
        o = self.cfg.optim
        if o.schedule != "plateau" or self.state.step % o.plateau_every:
            return False
        from maebench import plateau

        self.valid_record = plateau.check(self.model, self.valid_items, self.scheduler, self.cfg, self.state.step,
                                          self.device, self._autocast)
        return True

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def end_window(self) -> dict[str, Any]:
        """Host sync point: check the window finite, append its metrics record (rank 0 writes), start a new one."""
        sums, stats = self.window.reduce(self.env)
        if sums[2] == 0:
            self._no_audio_error()
        if sums[3] > 0:
            self._nonfinite_error()
        elapsed = time.perf_counter() - self.window.start
        clips, weight = int(sums[2]), max(sums[1], 1e-12)
        self.clips_total += clips
        self.last_loss = sums[0] / weight
        record = {
            "step": self.state.step, "epoch": self.state.epoch, "loss": self.last_loss,
            **{name: value / weight for name, value in stats.items()},
            "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(self.grad_norm), "clips": clips,
            "clips_per_s": clips / max(elapsed, 1e-9), "elapsed_s": time.perf_counter() - self.run_start,
            **self.valid_record,
        }
        self.valid_record = {}
        self.losses.append((self.state.step, self.last_loss))

        def append() -> None:
            with _writing(self.run_dir, self.last_checkpoint), open(self.run_dir / layout.METRICS_FILE, "a") as out:
                out.write(json.dumps(record) + "\n")

        _main_first(self.env, append)
        if self.tensorboard is not None:
            self.tensorboard.log(record)
        self.window.reset(self.state.step)
        return record

    def _no_audio_error(self) -> None:
        """Stop (collectively) when a whole logging window had no good clip: a loss of 0.0 and a checkpoint of an
        untrained model would otherwise pass for a run."""
        examples = ddp.all_gather_objects(self.skipped.pending[:3] or self.state.skipped[-3:], self.env)
        named = ", ".join(dict.fromkeys(p for paths in examples for p in paths)) or "none named"
        raise MaebenchError(
            f"no readable audio in steps {self.window.first_step}-{self.state.step}: every clip drawn was missing, "
            f"unreadable, empty, too short, non-finite or too loud (e.g. {named}); stopped without saving. Check "
            f"--data {self.cfg.data.source} (`maebench data manifest` lists what can be read)"
        )

    def _nonfinite_error(self) -> None:
        """Stop (collectively) on a non-finite loss or gradient, naming the files of the first batch it came from;
        they are written to RUN/skip_files.txt, which a --resume leaves out."""
        local = self.window.first_bad_batch()
        if local is not None:  # paths, not indices: every rank lists the same items, but say what they are
            local = (local[0], [str(self.batches.items[i].path) for i in local[1]])
        culprits = [item for item in ddp.all_gather_objects(local, self.env) if item is not None]
        good = f"{self.last_checkpoint}" if self.last_checkpoint else "none was written yet"
        message = (f"loss or gradients became NaN/inf before step {self.state.step}; stopped without saving. "
                   f"Last good checkpoint: {good}.")
        if culprits:
            step = min(step for step, _ in culprits)
            found = sorted({path for at, paths in culprits if at == step for path in paths})
            if found and self.env.is_main:
                with _writing(self.run_dir, self.last_checkpoint):
                    add_skip_files(self.run_dir, found)
            shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
            message += (f" It first happened at step {step}, in the batch of {shown}. These files are now in "
                        f"{self.run_dir / SKIP_FILES}, which --resume leaves out; if they are fine (delete them "
                        "from that list), lower optim.lr instead")
        else:
            message += " Lower optim.lr (or check the data)"
        raise MaebenchError(message + " and rerun with --resume")

    def save_checkpoint(self) -> None:
        """Gather every rank's bad files and RNG streams, then rank 0 writes; all ranks wait for it."""
        self.skipped.gather(self.env)
        rngs = ddp.all_gather_objects(ckpt.capture_rng(self.device), self.env)
        cfg = self.cfg
        provenance = {"trained_by": "maebench pretrain", "step": self.state.step, "config_hash": self.identity,
                      "model": f"{cfg.model.name}:{cfg.model.size}"}

        def write() -> Path:
            with _writing(self.run_dir, self.last_checkpoint):
                return ckpt.save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer,
                                            scheduler=self.scheduler, state=self.state, rng=rngs,
                                            config_hash=self.identity, world_size=self.env.world_size,
                                            provenance=provenance, keep_last=cfg.train.keep_last,
                                            cpu_threads=self.threads)

        _main_first(self.env, write)  # a write error on rank 0 stops every rank
        self.last_checkpoint = layout.step_dir(self.run_dir, self.state.step)

    # ---- summary

    def summary(self) -> TrainResult:
        """Gather the last bad-file notes and peak memory; rank 0 prints the summary and records the latest run."""
        self.skipped.gather(self.env)
        wall = time.perf_counter() - self.run_start
        if self.state.step == self.start_step and self.env.is_main:
            print(f"nothing to do: {self.run_dir} is already at step {self.state.step} "
                  f"(train.max_steps={self.cfg.train.max_steps})")
        peak = _peak_memory(self.device)
        if self.env.is_distributed:
            total = torch.tensor([peak], dtype=torch.float64, device=self.device)
            peak = int(ddp.all_reduce_sum(total, self.env).item())
        result = TrainResult(
            run_dir=self.run_dir, checkpoint=self.last_checkpoint, start_step=self.start_step, steps=self.state.step,
            wall_s=wall, clips_per_s=self.clips_total / max(wall, 1e-9), peak_memory_bytes=peak,
            last_loss=self.last_loss, num_skipped=self.state.num_skipped, skipped=list(self.state.skipped),
            losses=self.losses,
        )
        if self.env.is_main:
            _print_summary(result, self.env, self.device, next_hint=self.set_latest)
            if self.set_latest:
                record_latest_pretrain_run(self.run_dir)
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


@contextlib.contextmanager
def _writing(run_dir: Path, last_checkpoint: Path | None):
    """A failed write to the run directory (read-only, full disk, no permission) as a one-line MaebenchError; the
    checkpoints already there are intact (every checkpoint is staged and renamed into place)."""
    try:
        yield
    except OSError as err:
        reason = (err.strerror or str(err) or type(err).__name__) + (f": {err.filename}" if err.filename else "")
        kept = f"the last checkpoint {last_checkpoint} is intact" if last_checkpoint else "no checkpoint was lost"
        raise MaebenchError(f"cannot write to run directory {run_dir} ({reason}); {kept}: free space or fix "
                            "permissions and rerun the same command to resume, or choose another --run-dir") from None


def read_skip_files(run_dir: Path, *, quiet: bool = True) -> set[str]:
    """The audio files RUN/skip_files.txt tells this run to leave out (one path a line, as the data lists them;
    `#` starts a comment): written when a batch made the loss non-finite, editable by hand."""
    path = run_dir / SKIP_FILES
    if not path.is_file():
        return set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MaebenchError(f"cannot read {path} ({err}); fix or delete it") from None
    skip = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
    if skip and not quiet:
        print(f"note: leaving out the {len(skip)} file(s) listed in {path}", flush=True)
    return skip


def add_skip_files(run_dir: Path, paths: list[str]) -> None:
    """Add `paths` to RUN/skip_files.txt (kept: what is already listed, comments included)."""
    path = run_dir / SKIP_FILES
    old = path.read_text(encoding="utf-8") if path.is_file() else (
        "# audio files maebench pretrain leaves out of this run (one a line); written when a batch of them made the "
        "loss non-finite\n")
    listed = {line.strip() for line in old.splitlines()}
    new = [p for p in paths if p not in listed]
    write_text_atomic(path, old + ("" if old.endswith("\n") else "\n") + "".join(f"{p}\n" for p in new))


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _print_summary(result: TrainResult, env: ddp.DistEnv, device: torch.device, next_hint: bool = True) -> None:
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
        print(f"skipped {result.num_skipped} unreadable, empty, too short, non-finite, too loud or listed-to-skip "
              f"file(s): {listed}{more}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    if result.checkpoint and next_hint:
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
