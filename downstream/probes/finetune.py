"""The `finetune` probe: the upstream is trained with a classification head.

- Recipe "ssast" (AS, ESC-50, KS2): masked mean of the last layer's tokens -> LayerNorm -> Linear (SSAST's
  `ft_avgtok`), epochs, warm-up, MultiStepLR decay, SpecAugment through `upstream.fbank_augment`, waveform mixup,
  optional weight averaging over a window of epochs.
- Recipe "superb" (KS1, SID, ER, as MAE-AST fine-tuned them through s3prl): the SUPERB head over a trainable
  upstream, a fixed step budget, the model picked on dev.

Read top to bottom: `finetune_probe` = `_setup` (model, head, data, optimiser) -> epochs of `_train_epoch`
(micro-batches, `_optimizer_step`, `_dev_window`) and `_average_epoch` -> `_summary` (pick the final weights,
test).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.downstream.augment import NoiseRoll, SpecAugment, mixup
from maebench.downstream.batching import eval_batches, pad_batch
from maebench.downstream.device import device_autocast, module_device
from maebench.downstream.heads import AvgTokHead, SuperbHead, token_width
from maebench.downstream.metrics import task_score
from maebench.downstream.probes.protocol import apply_input_protocol, training_fold
from maebench.downstream.probes.result import ProbeResult
from maebench.downstream.probes.settings import (
    FinetuneSettings,
    SsastFinetuneSettings,
    StepDecay,
    protocol_family,
    resolve_settings,
    settings_dict,
)
from maebench.downstream.probes.training import (
    DevScorer,
    balanced_weights,
    eval_labels,
    loss_name,
    soft_target_loss,
    state_copy,
    targets_for,
)
from maebench.progress import progress_bar
from maebench.upstream.frontend import frames_to_samples
from maebench.upstream.interface import Upstream

_State = list[dict[str, Tensor]]


def finetune_probe(
    upstream: Upstream, task, fold, *, seed: int = 0, settings: FinetuneSettings | None = None, quiet: bool = True,
    num_workers: int = 0,
) -> ProbeResult:
    """Fine-tune `upstream` (modified in place: pass a copy) with a classification head on `fold`."""
    settings = settings if settings is not None else resolve_settings("finetune", task,
                                                                      family=protocol_family(upstream))
    apply_input_protocol(upstream, settings)
    run = _setup(upstream, task, training_fold(fold, settings), settings, seed=seed, num_workers=num_workers)
    start = time.perf_counter()
    upstream.fbank_augment = run.augment if run.augment.active else None
    upstream.input_augment = NoiseRoll() if settings.noise_augment else None
    try:
        with progress_bar(quiet, unit="steps") as progress:
            bar = progress.add_task(f"finetune {task.name} {fold.name}", total=run.max_steps)
            while run.step < run.max_steps:
                _train_epoch(run, lambda: progress.advance(bar))
                _average_epoch(run)
                _test_epoch(run)
    finally:
        upstream.fbank_augment = None
        upstream.input_augment = None
    return _summary(run, start, quiet=quiet)


# ------------------------------------------------------------------------------------------------------- setup
@dataclass
class _Run:
    """Everything one fine-tuning run holds: what `_setup` builds, and the progress the loop makes."""

    upstream: Upstream
    head: nn.Module
    task: object
    fold: object
    settings: FinetuneSettings
    device: torch.device
    dataset: _TrainAudio
    loader: torch.utils.data.DataLoader
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_targets: Tensor
    loss: str
    augment: SpecAugment
    max_steps: int
    eval_every: int
    averaging: tuple[int, int] | None  # the epochs whose weights are averaged (no dev selection then)
    num_workers: int
    step: int = 0
    epoch: int = 0
    best: tuple[float | None, int, _State | None] = (None, 0, None)  # (dev score, step, weights)
    average: _State | None = None
    averaged_epochs: int = 0
    epoch_test_scores: list[float] | None = None  # model_selection "test_epoch_mean": test score after each epoch
    dev_scorer: DevScorer | None = None


def _setup(upstream: Upstream, task, fold, settings: FinetuneSettings, *, seed: int, num_workers: int) -> _Run:
    """The head, the training data, the optimiser and its schedule, in the order that fixes the random streams."""
    device = module_device(upstream)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = _make_head(upstream, task, settings).to(device)
    crop = _train_crop(upstream, task, settings)
    dataset = _TrainAudio(task, fold.train, crop, upstream.min_input_samples(), seed)
    loader = _train_loader(dataset, task, settings, generator, num_workers)
    steps_per_epoch = math.ceil(len(loader) / settings.grad_accum)
    max_steps, eval_every = _budget(settings, steps_per_epoch)
    params = [{"params": [p for p in upstream.parameters() if p.requires_grad], "lr": settings.lr},
              {"params": list(head.parameters()), "lr": settings.lr * settings.head_lr_mult}]
    optimizer = torch.optim.Adam(params, betas=settings.betas, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(settings, steps_per_epoch))
    return _Run(
        upstream=upstream, head=head, task=task, fold=fold, settings=settings, device=device, dataset=dataset,
        loader=loader, generator=generator, optimizer=optimizer, scheduler=scheduler,
        train_targets=targets_for([ex.label for ex in fold.train], task), loss=loss_name(settings, task),
        augment=SpecAugment(settings.freqm, settings.timem), max_steps=max_steps,
        eval_every=eval_every, num_workers=num_workers,
        averaging=settings.weight_averaging if isinstance(settings, SsastFinetuneSettings) else None,
        dev_scorer=DevScorer(task, [ex.label for ex in fold.dev], balanced=getattr(settings, "balanced_dev", False),
                             seed=seed),
    )


def _make_head(upstream: Upstream, task, settings: FinetuneSettings) -> nn.Module:
    """SSAST's `ft_avgtok` head (recipe "ssast") or the SUPERB head, sized by one forward of a silent clip."""
    device = module_device(upstream)
    with torch.no_grad():
        probe_wav = torch.zeros(1, upstream.min_input_samples() + upstream.sample_rate, device=device)
        upstream.eval()
        shape = upstream(probe_wav, torch.tensor([probe_wav.shape[1]], device=device))
        num_layers, dim = len(shape.hidden_states), shape.hidden_states[-1].shape[-1]
    if isinstance(settings, SsastFinetuneSettings):
        return AvgTokHead(dim, task.num_classes, token_width(upstream, dim))
    return SuperbHead(num_layers, dim, task.num_classes, settings.projector_dim, last_only=settings.layers == "last")


def _train_crop(upstream: Upstream, task, settings: FinetuneSettings) -> int | None:
    """Training clips are cropped to the task's train crop and to `target_length` fbank frames, the shorter (with
    SSAST's global input the model itself cuts every clip to target_length from its start, as the reference)."""
    crops = [int(task.train_crop_seconds * int(upstream.sample_rate))] if task.train_crop_seconds else []
    if settings.target_length and getattr(upstream, "global_input", None) is None:
        crops.append(frames_to_samples(settings.target_length))
    return min(crops) if crops else None


def _train_loader(dataset: _TrainAudio, task, settings: FinetuneSettings, generator: torch.Generator,
                  num_workers: int) -> torch.utils.data.DataLoader:
    """Shuffled batches, or batches drawn by the task's sample weights (`balanced_sampling`)."""
    weights = balanced_weights(task, settings, len(dataset))
    order = dict(shuffle=True, generator=generator) if weights is None else dict(
        sampler=torch.utils.data.WeightedRandomSampler(weights, len(dataset), generator=generator))
    return torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, num_workers=num_workers,
                                       collate_fn=_collate, drop_last=False, **order)


def _budget(settings: FinetuneSettings, steps_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps, dev evaluation interval): SSAST counts epochs and evaluates each; SUPERB counts steps."""
    if isinstance(settings, SsastFinetuneSettings):
        return settings.epochs * steps_per_epoch, steps_per_epoch
    return settings.max_steps, settings.eval_every or steps_per_epoch


def _lr_factor(settings: FinetuneSettings, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then (recipe "ssast") MultiStepLR: times `decay` at epoch `start` and
    every `step` epochs after (SSAST's `lrscheduler_start/step/decay`)."""
    warmup = settings.warmup_steps
    schedule: StepDecay | None = settings.lr_schedule if isinstance(settings, SsastFinetuneSettings) else None

    def factor(step: int) -> float:
        value = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if schedule:
            epoch = step // max(1, steps_per_epoch)
            if epoch >= schedule.start:
                value *= schedule.decay ** ((epoch - schedule.start) // schedule.step + 1)
        return value

    return factor


# -------------------------------------------------------------------------------------------------------- loop
def _train_epoch(run: _Run, advance: Callable[[], None]) -> None:
    """One pass over the training data (or up to the step budget): a step every `grad_accum` micro-batches."""
    run.dataset.epoch = run.epoch
    run.upstream.train()
    run.head.train()
    accum, micro = run.settings.grad_accum, 0
    for indices, wavs, lens in run.loader:
        wavs, lens, targets = mixup(wavs, lens, run.train_targets[indices], run.settings.mixup, run.generator)
        with device_autocast(run.device):
            features = run.upstream(wavs.to(run.device), lens.to(run.device))
            logits = run.head.forward_features(features)
        (soft_target_loss(logits, targets.to(run.device), run.loss) / accum).backward()
        micro += 1
        if micro % accum and micro != len(run.loader):
            continue
        _optimizer_step(run)
        advance()
        _dev_window(run)
        if run.step >= run.max_steps:
            break
    run.epoch += 1


def _optimizer_step(run: _Run) -> None:
    """Clip (when `grad_clip`), step, clear the gradients, advance the schedule."""
    if run.settings.grad_clip:
        nn.utils.clip_grad_norm_(list(run.upstream.parameters()) + list(run.head.parameters()),
                                 run.settings.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.step += 1


def _dev_window(run: _Run) -> None:
    """Every `eval_every` steps (and after the last): score dev and keep the best weights (not when averaging)."""
    if not run.fold.dev or run.averaging or not (run.step % run.eval_every == 0 or run.step == run.max_steps):
        return
    score = _dev_score(run)
    if run.best[0] is None or score > run.best[0]:
        run.best = (score, run.step, state_copy(run.upstream, run.head))
    run.upstream.train()
    run.head.train()


def _average_epoch(run: _Run) -> None:
    """After an epoch inside the `weight_averaging` window: fold its weights into the running mean."""
    if not run.averaging or not run.averaging[0] <= run.epoch <= run.averaging[1]:
        return
    states = state_copy(run.upstream, run.head)
    run.averaged_epochs += 1
    run.average = states if run.average is None else [
        {k: _running_mean(a[k], s[k], run.averaged_epochs) for k in a} for a, s in zip(run.average, states,
                                                                                       strict=True)]


def _test_epoch(run: _Run) -> None:
    """With model_selection "test_epoch_mean": score test after the epoch (SSAST validates on the test fold every
    epoch; `maebench.downstream.selection` picks the epoch over all folds)."""
    if getattr(run.settings, "model_selection", "final") != "test_epoch_mean":
        return
    logits = predict(run.upstream, run.head, run.task, run.fold.test, num_workers=run.num_workers, quiet=True)
    score = task_score(run.task.metric, logits, eval_labels([ex.label for ex in run.fold.test], run.task))
    run.epoch_test_scores = [*(run.epoch_test_scores or []), score]
    run.upstream.train()
    run.head.train()


def _running_mean(mean: Tensor, new: Tensor, count: int) -> Tensor:
    if not mean.is_floating_point():
        return new
    return mean + (new - mean) / count


def _dev_score(run: _Run) -> float:
    logits = predict(run.upstream, run.head, run.task, run.fold.dev, num_workers=run.num_workers, quiet=True)
    return run.dev_scorer(logits)


# ----------------------------------------------------------------------------------------------------- summary
def _summary(run: _Run, start: float, *, quiet: bool) -> ProbeResult:
    """Load the averaged or best-on-dev weights, score them on test, and report what was selected."""
    final_state = run.average if run.average is not None else run.best[2]
    if final_state is not None:
        run.upstream.load_state_dict(final_state[0])
        run.head.load_state_dict(final_state[1])
    fresh_dev = run.fold.dev and (run.average is not None or run.best[2] is None)
    selected_dev = _dev_score(run) if fresh_dev else run.best[0]
    train_s = time.perf_counter() - start
    task, fold = run.task, run.fold
    test_logits = predict(run.upstream, run.head, task, fold.test, num_workers=run.num_workers, quiet=quiet,
                          description=f"test {task.name} {fold.name}")
    superb = isinstance(run.head, SuperbHead)
    return ProbeResult(
        probe="finetune", score=task_score(task.metric, test_logits, eval_labels([ex.label for ex in fold.test], task)),
        dev_score=selected_dev, layers={"weights": run.head.rounded_layer_weights()} if superb else {},
        hparams={**settings_dict(run.settings), "head": "superb" if superb else "ft_avgtok"},
        timings={"extract_s": 0.0, "train_s": train_s},
        details={"steps": run.step, "epochs": run.epoch, "best_step": run.best[1],
                 "selection": "weight averaging" if run.average is not None else (
                     "best dev" if run.fold.dev else "last step (no dev split)"),
                 **({"epoch_test_scores": run.epoch_test_scores} if run.epoch_test_scores is not None else {})},
    )


# -------------------------------------------------------------------------------------------------------- data
class _TrainAudio(torch.utils.data.Dataset):
    """Training waveforms with a random crop of at most `crop_samples` (the task's train crop / target length)."""

    def __init__(self, task, examples: Sequence, crop_samples: int | None, min_samples: int, seed: int):
        self.task, self.examples, self.crop, self.min_samples = task, examples, crop_samples, min_samples
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        wav = self.task.read(self.examples[index])
        if self.crop is not None and wav.numel() > self.crop:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            start = int(rng.integers(0, wav.numel() - self.crop + 1))
            wav = wav[start : start + self.crop]
        if wav.numel() < self.min_samples:
            wav = F.pad(wav, (0, self.min_samples - wav.numel()))
        return index, wav


def _collate(items: list[tuple[int, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    indices = torch.tensor([i for i, _ in items])
    wavs, lens = pad_batch([w for _, w in items])
    return indices, wavs, lens


@torch.no_grad()
def predict(
    upstream: Upstream, head: nn.Module, task, examples: Sequence, *, batch_size: int = 16,
    batch_seconds: float = 160.0, num_workers: int = 0, quiet: bool = True, description: str = "predict",
) -> np.ndarray:
    """Logits (N, C) of a live upstream + head over `examples` (eval mode, evaluation crop, length-sorted)."""
    device = module_device(upstream)
    out = np.zeros((len(examples), task.num_classes), dtype=np.float32)
    was_training = (upstream.training, head.training)
    upstream.eval()
    head.eval()
    batches = eval_batches(upstream, task, examples, batch_size=batch_size, batch_seconds=batch_seconds,
                           num_workers=num_workers)
    try:
        with progress_bar(quiet, unit="clips") as progress, device_autocast(device):
            bar = progress.add_task(description, total=len(examples))
            for indices, wavs, lens in batches:
                features = upstream(wavs.to(device), lens.to(device))
                logits = head.forward_features(features)
                out[indices] = logits.float().cpu().numpy()
                progress.advance(bar, len(indices))
    finally:
        upstream.train(was_training[0])
        head.train(was_training[1])
    return out
