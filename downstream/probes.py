"""The three probes that turn an upstream into task scores: `linear`, `finetune` and `logreg`.

- `linear` (SUPERB): frozen upstream; softmax-weighted layer sum -> Linear(D, 256) -> masked mean over time ->
  Linear(256, C), Adam, the task's SUPERB step budget, model picked on dev. Trained on cached pooled features,
  which gives exactly the frame-level model (see `feature_cache`), so each step costs a few matrix products.
- `finetune`: upstream trainable. Recipe "ssast" (AS, ESC-50, KS2): masked mean of the last layer's tokens ->
  LayerNorm -> Linear (SSAST's `ft_avgtok`), epochs, warm-up, MultiStepLR decay, SpecAugment through
  `upstream.fbank_augment`, waveform mixup, optional weight averaging. Recipe "superb" (KS1, SID, ER, as MAE-AST
  fine-tuned them through s3prl): the SUPERB head over a trainable upstream, fixed step budget.
- `logreg`: scikit-learn logistic regression per layer on standardised cached features; layer and C picked on
  dev (or on inner folds when a task has no dev split); one-vs-rest for multi-label tasks.

Every probe returns a `ProbeResult` with the test score in percent.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.downstream.feature_cache import (
    FeatureSet,
    cached_features,
    eval_batches,
    masked_mean,
    min_input_samples,
    module_device,
    pad_batch,
    progress_bar,
)
from maebench.downstream.metrics import multi_hot, task_score
from maebench.errors import MaebenchError
from maebench.upstream.interface import Upstream

PROBES = ("linear", "finetune", "logreg")


@dataclass
class ProbeResult:
    """One probe run on one fold with one seed."""

    probe: str
    score: float  # test metric, percent
    dev_score: float | None  # the selection metric on dev, percent (None without a dev split)
    layers: dict[str, list[float]]  # {"weights": softmax layer weights} (linear) or {"scores": dev per layer}
    hparams: dict[str, Any]
    timings: dict[str, float]  # extract_s, train_s
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- hyperparameters
def resolve_hparams(probe: str, task, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's defaults for `probe` with `overrides` applied (values from the CLI are coerced to the type of
    the default); an unknown key is a MaebenchError listing the known ones."""
    if probe not in PROBES:
        raise MaebenchError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
    hparams = copy.deepcopy(task.probe_defaults.get(probe, {}))
    for key, value in (overrides or {}).items():
        key = key.removeprefix(f"{probe}.")
        if key not in hparams:
            raise MaebenchError(
                f"unknown {probe} setting {key!r} for task {task.name}; known: {', '.join(sorted(hparams))}"
            )
        hparams[key] = coerce_value(value, hparams[key], key)
    return hparams


def coerce_value(value: Any, default: Any, key: str) -> Any:
    """`value` (often a string from --set) as the type of `default`; YAML syntax for lists, dicts and None."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(float(value)) if float(value).is_integer() else float(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return value
        parsed = yaml.safe_load(value)
        if isinstance(default, (list, tuple)) and isinstance(parsed, list):
            return [float(v) if isinstance(v, str) else v for v in parsed]
        return parsed
    except (ValueError, yaml.YAMLError) as err:
        raise MaebenchError(f"bad value {value!r} for setting {key!r} (default {default!r}); "
                            "give a value of the same type") from err


# ------------------------------------------------------------------------------------------------ shared parts
class SuperbHead(nn.Module):
    """SUPERB's utterance head: softmax-weighted layer sum -> Linear(D, P) -> masked mean -> Linear(P, C).

    `forward_frames` is the s3prl computation on frame-level features; `forward_pooled` takes per-layer masked
    means (N, L, D) and gives the same outputs (everything before the pooling is linear per frame).
    """

    def __init__(self, num_layers: int, dim: int, num_classes: int, projector_dim: int = 256):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.projector = nn.Linear(dim, projector_dim)
        self.classifier = nn.Linear(projector_dim, num_classes)

    def layer_weights(self) -> Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        weights = self.layer_weights().to(pooled.dtype)
        return self.classifier(self.projector((weights[None, :, None] * pooled).sum(dim=1)))

    def forward_frames(self, hidden_states: Sequence[Tensor], lens: Tensor) -> Tensor:
        weights = self.layer_weights()
        summed = sum(w.to(h.dtype) * h for w, h in zip(weights, hidden_states, strict=True))
        return self.classifier(masked_mean(self.projector(summed), lens))


class AvgTokHead(nn.Module):
    """SSAST's `ft_avgtok` head: mean of the last layer's valid tokens -> LayerNorm(token_dim) -> Linear.

    Patch upstreams concatenate the tokens of one time step into a frame, (B, T, k * token_dim); every valid frame
    holds all k tokens, so the token mean is the frame mean split into its k tokens and averaged, and the head
    sees token_dim features as in SSAST rather than k times as many. Pooling runs in float32 (bf16 autocast).
    """

    def __init__(self, dim: int, num_classes: int, token_dim: int | None = None):
        super().__init__()
        self.token_dim = token_dim or dim
        if dim % self.token_dim:
            raise ValueError(f"frame width {dim} is not a multiple of the token width {self.token_dim}")
        self.norm = nn.LayerNorm(self.token_dim)
        self.classifier = nn.Linear(self.token_dim, num_classes)

    def forward_frames(self, hidden_states: Sequence[Tensor], lens: Tensor) -> Tensor:
        frames = masked_mean(hidden_states[-1].float(), lens)  # (B, k * token_dim)
        tokens = frames.unflatten(-1, (-1, self.token_dim)).mean(dim=1)
        return self.classifier(self.norm(tokens))


def token_width(upstream: Upstream, frame_dim: int) -> int:
    """Width of one transformer token in `upstream`'s frames: its config's `dim` (MAE-AST, SSAST) when that
    divides the frame width, else the whole frame."""
    dim = upstream.to_config().get("dim")
    return dim if isinstance(dim, int) and 0 < dim <= frame_dim and frame_dim % dim == 0 else frame_dim


def targets_for(labels: Sequence, task) -> Tensor:
    """Training targets as float (N, C): multi-hot for multi-label tasks, one-hot otherwise."""
    if task.multilabel:
        return torch.from_numpy(multi_hot(labels, task.num_classes))
    return F.one_hot(torch.as_tensor(labels, dtype=torch.long), task.num_classes).float()


def eval_labels(labels: Sequence, task) -> np.ndarray:
    """Labels in the form `task_score` expects: (N,) class indices or (N, C) multi-hot."""
    return multi_hot(labels, task.num_classes) if task.multilabel else np.asarray(labels, dtype=np.int64)


def soft_target_loss(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """"bce": sigmoid BCE (multi-label, and SSAST's choice for KS2); "ce": cross entropy with (soft) targets."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    if loss == "ce":
        return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
    raise MaebenchError(f"unknown loss {loss!r}; use 'ce' or 'bce'")


def loss_name(hparams: dict, task) -> str:
    """The training loss of a probe: sigmoid BCE for multi-label tasks, else the setting (default "ce")."""
    return "bce" if task.multilabel else hparams.get("loss", "ce")


def device_autocast(device: torch.device):
    """bf16 autocast on CUDA (the precision the feature cache records), full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@contextmanager
def _few_threads(device: torch.device):
    """One intra-op thread for head-only work on CPU: its ops are tiny, and on a busy machine waiting for a
    second OpenMP thread costs more than the op itself (measured 10-30x slower with 2 threads under load)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _state_copy(*modules: nn.Module) -> list[dict[str, Tensor]]:
    return [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for m in modules]


def _epoch_batches(num: int, batch_size: int, generator: torch.Generator, weights: Tensor | None = None):
    """Endless shuffled batches of indices (a new permutation every epoch), like a shuffling DataLoader; with
    `weights`, each epoch draws `num` indices with replacement in proportion to them (WeightedRandomSampler)."""
    while True:
        if weights is None:
            order = torch.randperm(num, generator=generator)
        else:
            order = torch.multinomial(weights, num, replacement=True, generator=generator)
        for start in range(0, num, batch_size):
            yield order[start : start + batch_size]


# ---------------------------------------------------------------------------------------------- linear probe
def train_superb_head(
    head: SuperbHead, *, num_train: int, train_targets: Tensor, train_logits: Callable[[Tensor], Tensor],
    dev_score: Callable[[], float] | None, hparams: dict, loss: str, seed: int, quiet: bool = True,
    description: str = "linear", sample_weights: Tensor | None = None,
) -> tuple[float | None, int]:
    """SUPERB training loop: Adam, `max_steps` updates of `grad_accum` micro-batches, gradient clipping, dev
    evaluation every `eval_every` updates keeping the best head. Returns (best dev score, its step).
    `sample_weights` (one per training item) draws batches like s3prl's class-balanced sampler."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=float(hparams["lr"]))
    batches = _epoch_batches(num_train, int(hparams["batch_size"]), generator, sample_weights)
    max_steps, accum = int(hparams["max_steps"]), int(hparams.get("grad_accum", 1))
    eval_every = int(hparams.get("eval_every", max_steps)) or max_steps
    best: tuple[float | None, int, list | None] = (None, 0, None)
    head.train()
    with progress_bar(quiet) as progress:
        bar = progress.add_task(description, total=max_steps)
        for step in range(1, max_steps + 1):
            optimizer.zero_grad(set_to_none=True)
            for _ in range(accum):
                indices = next(batches)
                logits = train_logits(indices)
                (soft_target_loss(logits, train_targets[indices].to(logits.device), loss) / accum).backward()
            if hparams.get("grad_clip"):
                nn.utils.clip_grad_norm_(head.parameters(), float(hparams["grad_clip"]))
            optimizer.step()
            progress.advance(bar)
            if dev_score is not None and (step % eval_every == 0 or step == max_steps):
                head.eval()
                score = dev_score()
                head.train()
                if best[0] is None or score > best[0]:
                    best = (score, step, _state_copy(head))
    if best[2] is not None:
        head.load_state_dict(best[2][0])
    head.eval()
    return best[0], best[1] if best[2] is not None else max_steps


@torch.no_grad()
def _pooled_logits(head: SuperbHead, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    device = module_device(head)
    out = [head.forward_pooled(torch.from_numpy(np.array(features[i : i + chunk])).to(device)).float().cpu()
           for i in range(0, len(features), chunk)]
    return torch.cat(out).numpy()


def linear_probe(
    upstream: Upstream, task, fold, *, seed: int = 0, hparams: dict | None = None, quiet: bool = True,
    cache_options: dict | None = None,
) -> ProbeResult:
    """SUPERB linear probe of a frozen upstream on `fold`, trained on cached pooled features."""
    hparams = hparams if hparams is not None else resolve_hparams("linear", task)
    splits = _cached_splits(upstream, task, fold, quiet=quiet, cache_options=cache_options)
    train, dev, test = splits["train"], splits.get("dev"), splits["test"]
    device = module_device(upstream)
    torch.manual_seed(seed)
    head = SuperbHead(train.num_layers, train.features.shape[2], task.num_classes,
                      int(hparams.get("projector_dim", 256))).to(device)
    # toy and mid-sized splits fit in memory: read the memmap once; large ones are sliced per batch
    train_x = torch.from_numpy(np.array(train.features)) if train.features.nbytes < 2**31 else None

    def train_logits(indices: Tensor) -> Tensor:
        if train_x is not None:
            batch = train_x[indices]
        else:
            batch = torch.from_numpy(np.array(train.features[np.sort(indices.numpy())]))
            indices.copy_(torch.sort(indices).values)
        return head.forward_pooled(batch.to(device))

    def dev_score() -> float:
        return task_score(task.metric, _pooled_logits(head, dev.features), eval_labels(dev.labels, task))

    start = time.perf_counter()
    with _few_threads(device):
        best_dev, best_step = train_superb_head(
            head, num_train=len(train.keys), train_targets=targets_for(train.labels, task), train_logits=train_logits,
            dev_score=dev_score if dev is not None else None, hparams=hparams, loss=loss_name(hparams, task),
            seed=seed, quiet=quiet, description=f"linear {task.name} {fold.name}",
            sample_weights=balanced_weights(task, hparams, len(train.keys)),
        )
        score = task_score(task.metric, _pooled_logits(head, test.features), eval_labels(test.labels, task))
    return ProbeResult(
        probe="linear", score=score, dev_score=best_dev,
        layers={"weights": [round(float(w), 6) for w in head.layer_weights().detach().cpu()]},
        hparams=hparams, timings={"extract_s": sum(s.extract_s for s in splits.values()),
                                  "train_s": time.perf_counter() - start},
        details={"best_step": best_step, "cache_hits": {k: s.hit for k, s in splits.items()}},
    )


def balanced_weights(task, hparams: dict, num_train: int) -> Tensor | None:
    """The task's per-item training weights when the probe settings ask for balanced sampling, else None."""
    if task.sample_weights is None or not hparams.get("balanced_sampling"):
        return None
    if len(task.sample_weights) != num_train:
        raise MaebenchError(
            f"{task.name}: {len(task.sample_weights)} sample weights for {num_train} training items; "
            "set balanced_sampling=false or fix the task's weights"
        )
    return torch.tensor(task.sample_weights, dtype=torch.double)


def _cached_splits(upstream: Upstream, task, fold, *, quiet: bool, cache_options: dict | None) -> dict[str, FeatureSet]:
    options = dict(cache_options or {})
    options.setdefault("upstream_fingerprint", _fingerprint(upstream))
    options.setdefault("data_fingerprint", task.data_fingerprint())
    return {
        name: cached_features(upstream, task, examples, quiet=quiet, **options)
        for name, examples in fold.splits().items() if examples
    }


def _fingerprint(upstream: Upstream) -> str:
    from maebench.upstream.registry import fingerprint

    return fingerprint(upstream)


# ---------------------------------------------------------------------------------------------- logreg probe
def logreg_probe(
    upstream: Upstream, task, fold, *, seed: int = 0, hparams: dict | None = None, quiet: bool = True,
    cache_options: dict | None = None,
) -> ProbeResult:
    """Logistic regression on each layer's standardised pooled features; layer and C chosen on dev."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    hparams = hparams if hparams is not None else resolve_hparams("logreg", task)
    splits = _cached_splits(upstream, task, fold, quiet=quiet, cache_options=cache_options)
    train, dev, test = splits["train"], splits.get("dev"), splits["test"]
    cs = [float(c) for c in hparams["Cs"]]
    start = time.perf_counter()
    rows = []
    # small problems: one BLAS thread (extra threads only add waiting on a busy machine, measured 15x slower)
    blas_threads = 1 if train.features[:, 0].size < 4_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(blas_threads), progress_bar(quiet) as progress:
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # one-vs-rest on a class absent from train
        bar = progress.add_task(f"logreg {task.name} {fold.name}", total=train.num_layers * len(cs))
        for layer in range(train.num_layers):
            x_train = np.asarray(train.features[:, layer], dtype=np.float64)
            candidates = []  # (dev score, C, model fitted on all of train or None)
            for c in cs:
                candidates.append((*_logreg_dev_score(task, x_train, train.labels, dev, layer, c, hparams, seed), c))
                progress.advance(bar)
            dev_score, model, best_c = max(candidates, key=lambda item: item[0])
            if model is None:
                model = _fit_logreg(task, x_train, train.labels, best_c, hparams, seed)
            test_score = task_score(task.metric, model.scores(test.features[:, layer]), eval_labels(test.labels, task))
            rows.append({"layer": layer, "C": best_c, "dev": dev_score, "test": test_score})
    best = max(rows, key=lambda r: (r["dev"], -r["layer"]))
    if not quiet:
        _print_layer_curve(task, fold, rows, best)
    return ProbeResult(
        probe="logreg", score=best["test"], dev_score=best["dev"],
        layers={"scores": [round(r["dev"], 4) for r in rows], "test_scores": [round(r["test"], 4) for r in rows]},
        hparams={**hparams, "selected_layer": best["layer"], "selected_C": best["C"],
                 "selection": "dev" if dev is not None else "inner 3-fold CV"},
        timings={"extract_s": sum(s.extract_s for s in splits.values()), "train_s": time.perf_counter() - start},
        details={"curve": rows, "cache_hits": {k: s.hit for k, s in splits.items()}},
    )


class _FittedLogreg:
    """A standardiser + (one-vs-rest) logistic regression whose scores cover every class of the task."""

    def __init__(self, scaler, model, num_classes: int):
        self.scaler, self.model, self.num_classes = scaler, model, num_classes

    def scores(self, features) -> np.ndarray:
        x = self.scaler.transform(np.asarray(features, dtype=np.float64))
        raw = self.model.decision_function(x)
        classes = np.asarray(self.model.classes_) if hasattr(self.model, "classes_") else None
        if raw.ndim == 1:  # binary problem: sklearn returns one column of the positive class
            raw = np.stack([-raw, raw], axis=1)
        out = np.full((len(x), self.num_classes), -np.inf)
        columns = classes if classes is not None and classes.ndim == 1 and len(classes) == raw.shape[1] else None
        out[:, columns if columns is not None else np.arange(raw.shape[1])] = raw
        return out


def _fit_logreg(task, x: np.ndarray, labels: Sequence, c: float, hparams: dict, seed: int) -> _FittedLogreg:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    base = LogisticRegression(C=c, max_iter=int(hparams.get("max_iter", 1000)), random_state=seed)
    if task.multilabel:
        model = OneVsRestClassifier(base).fit(scaler.transform(x), multi_hot(labels, task.num_classes))
        model.classes_ = np.arange(task.num_classes)
    else:
        model = base.fit(scaler.transform(x), np.asarray(labels))
    return _FittedLogreg(scaler, model, task.num_classes)


def _logreg_dev_score(task, x_train, train_labels, dev: FeatureSet | None, layer: int, c: float, hparams, seed
                      ) -> tuple[float, _FittedLogreg | None]:
    """Dev score of C (and the model, fitted on all of train), or the mean over 3 inner folds of train (no model)."""
    if dev is not None:
        model = _fit_logreg(task, x_train, train_labels, c, hparams, seed)
        return task_score(task.metric, model.scores(dev.features[:, layer]), eval_labels(dev.labels, task)), model
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = list(train_labels)
    splitter = KFold(3, shuffle=True, random_state=seed) if task.multilabel else StratifiedKFold(
        3, shuffle=True, random_state=seed)
    scores = []
    for fit_idx, val_idx in splitter.split(x_train, None if task.multilabel else labels):
        model = _fit_logreg(task, x_train[fit_idx], [labels[i] for i in fit_idx], c, hparams, seed)
        val = eval_labels([labels[i] for i in val_idx], task)
        scores.append(task_score(task.metric, model.scores(x_train[val_idx]), val))
    return float(np.mean(scores)), None


def _print_layer_curve(task, fold, rows: list[dict], best: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"logreg per layer: {task.name} {fold.name} ({task.metric}, %)")
    for name in ("layer", "best C", "dev", "test"):
        table.add_column(name, justify="right")
    for row in rows:
        style = "bold green" if row is best else None
        table.add_row(str(row["layer"]), f"{row['C']:g}", f"{row['dev']:.2f}", f"{row['test']:.2f}", style=style)
    Console(stderr=True).print(table)


# -------------------------------------------------------------------------------------------- finetune probe
class SpecAugment:
    """One frequency mask and one time mask per item (widths uniform in [0, freqm) and [0, timem)), zeroed on the
    (B, T, F) filterbank before the model's normalisation, as SSAST's data loader does; optional SSAST noise
    augmentation (uniform noise of a random scale up to 0.1 and a time roll of up to 10 frames)."""

    def __init__(self, freqm: int, timem: int, noise: bool = False):
        self.freqm, self.timem, self.noise = int(freqm), int(timem), bool(noise)

    @staticmethod
    def _band(batch: int, size: int, width: int, device) -> Tensor:
        widths = (torch.rand(batch, device=device) * width).long()
        starts = (torch.rand(batch, device=device) * (size - widths + 1).clamp(min=1)).long()
        positions = torch.arange(size, device=device)[None, :]
        return (positions >= starts[:, None]) & (positions < (starts + widths)[:, None])

    def __call__(self, fbank: Tensor) -> Tensor:
        batch, frames, bins = fbank.shape
        keep = torch.ones_like(fbank, dtype=torch.bool)
        if self.freqm > 0:
            keep &= ~self._band(batch, bins, self.freqm, fbank.device)[:, None, :]
        if self.timem > 0:
            keep &= ~self._band(batch, frames, self.timem, fbank.device)[:, :, None]
        fbank = fbank * keep
        if self.noise:
            scale = float(torch.rand(())) / 10
            fbank = fbank + torch.rand_like(fbank) * scale
            fbank = torch.roll(fbank, int(torch.randint(-10, 10, ())), dims=1)
        return fbank


def mixup(wavs: Tensor, lens: Tensor, targets: Tensor, probability: float, generator: torch.Generator
          ) -> tuple[Tensor, Tensor, Tensor]:
    """SSAST/AST waveform mixup: each item, with `probability`, is mixed with a random other item of the batch,
    lambda ~ Beta(10, 10), targets mixed with the same lambda (lengths become the longer of the two)."""
    batch = wavs.shape[0]
    if probability <= 0 or batch < 2:
        return wavs, lens, targets
    chosen = torch.rand(batch, generator=generator) < probability
    partners = torch.randint(0, batch, (batch,), generator=generator)
    lam = torch.distributions.Beta(10.0, 10.0).sample((batch,))
    lam = torch.where(chosen, lam, torch.ones(batch))
    mixed = lam[:, None] * wavs + (1 - lam[:, None]) * wavs[partners]
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partners]
    new_lens = torch.where(chosen, torch.maximum(lens, lens[partners]), lens)
    return mixed, new_lens, mixed_targets


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
        with progress_bar(quiet) as progress, device_autocast(device):
            bar = progress.add_task(description, total=len(examples))
            for indices, wavs, lens in batches:
                features = upstream(wavs.to(device), lens.to(device))
                logits = head.forward_frames(features.hidden_states, features.lens.to(device))
                out[indices] = logits.float().cpu().numpy()
                progress.advance(bar, len(indices))
    finally:
        upstream.train(was_training[0])
        head.train(was_training[1])
    return out


def finetune_probe(
    upstream: Upstream, task, fold, *, seed: int = 0, hparams: dict | None = None, quiet: bool = True,
    num_workers: int = 0,
) -> ProbeResult:
    """Fine-tune `upstream` (modified in place: pass a copy) with a classification head on `fold`."""
    hparams = hparams if hparams is not None else resolve_hparams("finetune", task)
    recipe = hparams.get("recipe", "ssast")
    if recipe not in ("ssast", "superb"):
        raise MaebenchError(f"unknown fine-tuning recipe {recipe!r} for task {task.name}; use 'ssast' or 'superb'")
    device = module_device(upstream)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # discover the feature shape with one short silent clip
        probe_wav = torch.zeros(1, min_input_samples(upstream) + upstream.sample_rate, device=device)
        upstream.eval()
        shape = upstream(probe_wav, torch.tensor([probe_wav.shape[1]], device=device))
        num_layers, dim = len(shape.hidden_states), shape.hidden_states[-1].shape[-1]
    if recipe == "ssast":
        head: nn.Module = AvgTokHead(dim, task.num_classes, token_width(upstream, dim))
    else:
        head = SuperbHead(num_layers, dim, task.num_classes, int(hparams.get("projector_dim", 256)))
    head.to(device)

    crop_seconds = [s for s in (task.train_crop_seconds,) if s]
    if hparams.get("target_length"):
        crop_seconds.append(((int(hparams["target_length"]) - 1) * 160 + 400) / 16000)
    crop = int(min(crop_seconds) * upstream.sample_rate) if crop_seconds else None
    dataset = _TrainAudio(task, fold.train, crop, min_input_samples(upstream), seed)
    batch_size = int(hparams["batch_size"])
    sample_weights = balanced_weights(task, hparams, len(dataset))
    if sample_weights is not None:
        sampler = torch.utils.data.WeightedRandomSampler(sample_weights, len(dataset), generator=generator)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                             num_workers=num_workers, collate_fn=_collate, drop_last=False)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                             num_workers=num_workers, collate_fn=_collate, drop_last=False)
    steps_per_epoch = math.ceil(len(loader) / int(hparams.get("grad_accum", 1)))
    max_steps = int(hparams["max_steps"]) if recipe == "superb" else int(hparams["epochs"]) * steps_per_epoch
    eval_every = int(hparams.get("eval_every") or steps_per_epoch) if recipe == "superb" else steps_per_epoch

    head_lr = float(hparams["lr"]) * float(hparams.get("head_lr_mult", 1.0))
    params = [{"params": [p for p in upstream.parameters() if p.requires_grad], "lr": float(hparams["lr"])},
              {"params": list(head.parameters()), "lr": head_lr}]
    optimizer = torch.optim.Adam(params, betas=tuple(hparams.get("betas", (0.9, 0.999))),
                                 weight_decay=float(hparams.get("weight_decay", 0.0)))
    schedule = _lr_factor(hparams, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    train_targets = targets_for([ex.label for ex in fold.train], task)
    loss = loss_name(hparams, task)
    augment = SpecAugment(hparams.get("freqm", 0), hparams.get("timem", 0), hparams.get("noise_augment", False))
    averaging = hparams.get("weight_averaging") if recipe == "ssast" else None

    def dev_score() -> float:
        logits = predict(upstream, head, task, fold.dev, num_workers=num_workers, quiet=True)
        return task_score(task.metric, logits, eval_labels([ex.label for ex in fold.dev], task))

    start = time.perf_counter()
    best: tuple[float | None, int, list | None] = (None, 0, None)
    average: list[dict[str, Tensor]] | None = None
    averaged_epochs = 0
    step, epoch, accum = 0, 0, int(hparams.get("grad_accum", 1))
    upstream.fbank_augment = augment if (augment.freqm or augment.timem or augment.noise) else None
    try:
        with progress_bar(quiet) as progress:
            bar = progress.add_task(f"finetune {task.name} {fold.name}", total=max_steps)
            while step < max_steps:
                dataset.epoch = epoch
                upstream.train()
                head.train()
                micro = 0
                for indices, wavs, lens in loader:
                    targets = train_targets[indices]
                    wavs, lens, targets = mixup(wavs, lens, targets, float(hparams.get("mixup", 0.0)), generator)
                    with device_autocast(device):
                        features = upstream(wavs.to(device), lens.to(device))
                        logits = head.forward_frames(features.hidden_states, features.lens.to(device))
                    (soft_target_loss(logits, targets.to(device), loss) / accum).backward()
                    micro += 1
                    if micro % accum and micro != len(loader):
                        continue
                    if hparams.get("grad_clip"):
                        nn.utils.clip_grad_norm_(list(upstream.parameters()) + list(head.parameters()),
                                                 float(hparams["grad_clip"]))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    step += 1
                    progress.advance(bar)
                    if fold.dev and (step % eval_every == 0 or step == max_steps) and not averaging:
                        score = dev_score()
                        if best[0] is None or score > best[0]:
                            best = (score, step, _state_copy(upstream, head))
                        upstream.train()
                        head.train()
                    if step >= max_steps:
                        break
                epoch += 1
                if averaging and averaging[0] <= epoch <= averaging[1]:
                    states = _state_copy(upstream, head)
                    averaged_epochs += 1
                    average = states if average is None else [
                        {k: _running_mean(a[k], s[k], averaged_epochs) for k in a} for a, s in zip(average, states,
                                                                                                   strict=True)]
    finally:
        upstream.fbank_augment = None
    final_state = average if average is not None else best[2]
    if final_state is not None:
        upstream.load_state_dict(final_state[0])
        head.load_state_dict(final_state[1])
    selected_dev = dev_score() if fold.dev and (average is not None or best[2] is None) else best[0]
    train_s = time.perf_counter() - start
    test_logits = predict(upstream, head, task, fold.test, num_workers=num_workers, quiet=quiet,
                          description=f"test {task.name} {fold.name}")
    score = task_score(task.metric, test_logits, eval_labels([ex.label for ex in fold.test], task))
    layers = {"weights": [round(float(w), 6) for w in head.layer_weights().detach().cpu()]} if isinstance(
        head, SuperbHead) else {}
    return ProbeResult(
        probe="finetune", score=score, dev_score=selected_dev, layers=layers,
        hparams={**hparams, "head": "superb" if isinstance(head, SuperbHead) else "ft_avgtok"},
        timings={"extract_s": 0.0, "train_s": train_s},
        details={"steps": step, "epochs": epoch, "best_step": best[1],
                 "selection": "weight averaging" if average is not None else "best dev"},
    )


def _running_mean(mean: Tensor, new: Tensor, count: int) -> Tensor:
    if not mean.is_floating_point():
        return new
    return mean + (new - mean) / count


def _lr_factor(hparams: dict, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then (recipe "ssast") MultiStepLR: times `decay` at epoch `start` and
    every `step` epochs after (SSAST's `lrscheduler_start/step/decay`)."""
    warmup = int(hparams.get("warmup_steps") or 0)
    schedule = hparams.get("lr_schedule") if hparams.get("recipe", "ssast") == "ssast" else None

    def factor(step: int) -> float:
        value = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if schedule:
            epoch = step // max(1, steps_per_epoch)
            if epoch >= int(schedule["start"]):
                value *= float(schedule["decay"]) ** ((epoch - int(schedule["start"])) // int(schedule["step"]) + 1)
        return value

    return factor


# -------------------------------------------------------------------------------------------------- dispatch
def run_probe(
    probe: str, upstream: Upstream, task, fold, *, seed: int = 0, hparams: dict | None = None, quiet: bool = True,
    cache_options: dict | None = None, num_workers: int = 0,
) -> ProbeResult:
    """Run one probe on one fold with one seed."""
    hparams = hparams if hparams is not None else resolve_hparams(probe, task)
    if probe == "linear":
        return linear_probe(upstream, task, fold, seed=seed, hparams=hparams, quiet=quiet,
                            cache_options=cache_options)
    if probe == "logreg":
        return logreg_probe(upstream, task, fold, seed=seed, hparams=hparams, quiet=quiet,
                            cache_options=cache_options)
    if probe == "finetune":
        return finetune_probe(upstream, task, fold, seed=seed, hparams=hparams, quiet=quiet, num_workers=num_workers)
    raise MaebenchError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
