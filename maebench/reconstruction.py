"""RUN/reconstruction.png: what a pretraining run learned to do, in one picture.

One row per clip (two from the run's pretraining corpus, one keyword as the toy KS2 task renders them), four
panels: the filterbank as the model normalises it (its pretraining target), the input as the encoder saw it
(masked tokens blank), and the decoder's prediction of the masked tokens (visible ones as given) by the run's
random init (RUN/init/) and by its last checkpoint, under the same mask. MAE-AST predicts with its reconstruction
head, SSAST with its generative head (`gpredlayer`). The models run their own `pretrain_loss` as in pretraining
(train mode, no gradients, a fixed seed) and the figure reads the target and the prediction off it with forward
hooks, so it shows what the loss compares, not a re-implementation of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maebench.errors import MaebenchError
from maebench.upstream.checkpoint import RUN_INIT, RUN_RECONSTRUCTION, latest_checkpoint, step_of
from maebench.upstream.frontend import SAMPLE_RATE, num_frames

CORPUS_CLIPS = 2  # from the pretraining corpus; plus one toy KS2 keyword
SEED = 0  # masks and dropout of the figure's forward passes


@dataclass
class ClipPanels:
    """The arrays one row of the figure draws, each (mel bins, frames) with mel bin 0 first."""

    label: str
    target: np.ndarray  # the normalised filterbank the loss compares with (the model's tokens, laid out again)
    mask: np.ndarray  # bool: True where the token covering that bin and frame was masked
    predicted: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> visible as given, masked predicted
    mse: dict[str, float] = field(default_factory=dict)  # model name -> MSE over the masked tokens

    @property
    def masked_input(self) -> np.ndarray:
        """The input as the encoder saw it: NaN (drawn blank) where masked."""
        return np.where(self.mask, np.nan, self.target)


# ---------------------------------------------------------------------------------------------------- the models


def tokens_to_image(model: Any, tokens: Tensor) -> Tensor:
    """(N, values) tokens of one clip -> (mel bins, frames): the inverse of the model's own tokenisation
    (MAE-AST `_tokenise`: time-major tokens of (time, mel) values; SSAST `patchify`: frequency-major patches of
    (frequency, time) values)."""
    if model.family == "mae_ast":
        steps = tokens.shape[0] // model.tokens_per_step
        grid = tokens.reshape(steps, model.tokens_per_step, model.ktime, model.kchan).permute(0, 2, 1, 3)
        return grid.reshape(steps * model.ktime, model.tokens_per_step * model.kchan).T
    if model.family == "ssast":
        cfg = model.config
        rows, cols = cfg.pretrain_grid
        grid = tokens.reshape(rows, cols, cfg.fshape, cfg.tshape).permute(0, 2, 1, 3)
        return grid.reshape(rows * cfg.fshape, cols * cfg.tshape)
    raise MaebenchError(f"no reconstruction figure for model family {model.family!r} (mae_ast or ssast)")


def draw_mask(model: Any, num_samples: int, seed: int = SEED) -> Tensor:
    """(1, tokens) bool, the model's own masking rule for a clip of `num_samples`, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    if model.family == "mae_ast":
        steps = num_frames(num_samples, model.frontend) // model.ktime
        return model.make_mask(1, steps, generator=generator)
    return model.sample_mask(1, generator=generator).cpu()


def predict(model: Any, wav: Tensor, mask: Tensor, seed: int = SEED) -> tuple[Tensor, Tensor]:
    """(target tokens (N, values), predicted masked tokens (M, values), in ascending token order) of one clip,
    read off the model's own `pretrain_loss` with `mask`: the input of its token embedding and the output of its
    reconstruction (MAE-AST) or generative (SSAST) head."""
    captured: dict[str, Tensor] = {}
    head = model.recon_head if model.family == "mae_ast" else model.gpredlayer

    def keep_input(_module, args) -> None:
        captured.setdefault("input", args[0].detach())

    def keep_output(_module, _args, output) -> None:
        captured.setdefault("predicted", output.detach())

    hooks = [model.patch_embed.register_forward_pre_hook(keep_input), head.register_forward_hook(keep_output)]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            model.pretrain_loss(wav[None], torch.tensor([wav.numel()]), mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
        model.eval()
    target = captured["input"] if model.family == "mae_ast" else model.patchify(captured["input"])
    return target[0].float().cpu(), captured["predicted"][0].float().cpu()


def clip_panels(models: dict[str, Any], label: str, wav: Tensor, seed: int = SEED) -> ClipPanels:
    """One row: every model of `models` (same architecture) under one mask; the target is the first model's
    (the same for all: MAE-AST normalises with the clip's own statistics in train mode, SSAST with fixed ones)."""
    first = next(iter(models.values()))
    mask = draw_mask(first, wav.numel(), seed)
    panels: ClipPanels | None = None
    for name, model in models.items():
        target, predicted = predict(model, wav, mask, seed)
        flat = mask[0]
        if panels is None:
            mask_tokens = flat[:, None].expand_as(target).float()
            panels = ClipPanels(label, tokens_to_image(first, target).numpy(),
                                tokens_to_image(first, mask_tokens).numpy() > 0.5)
        filled = target.clone()
        filled[flat] = predicted  # masked tokens in ascending order, as the model gathered them
        panels.predicted[name] = tokens_to_image(first, filled).numpy()
        panels.mse[name] = float(((predicted - target[flat]) ** 2).mean())
    assert panels is not None
    return panels


# ---------------------------------------------------------------------------------------------------- the figure


def plot(rows: list[ClipPanels], path: Path, title: str) -> Path:
    """The figure: a row per clip; filterbank, masked input, then each model's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0].predicted)
    columns = 2 + len(names)
    fig, axes = plt.subplots(len(rows), columns, figsize=(3.0 * columns, 2.4 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        low, high = np.nanpercentile(row.target, [1, 99])
        images = [("filterbank (normalised)", row.target), ("masked input (as the encoder saw it)", row.masked_input)]
        images += [(f"{name}: masked MSE {row.mse[name]:.3f}", row.predicted[name]) for name in names]
        for c, (heading, image) in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
                      interpolation="nearest")
            ax.set_title(heading, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row.label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_clips(source: str | None, clip_seconds: float, count: int = CORPUS_CLIPS) -> list[tuple[str, Tensor]]:
    """(label, waveform) pairs: `count` clips spread over the pretraining corpus, then one toy KS2 keyword; each
    cut to the run's clip length (what a training batch holds)."""
    from maebench.audio import read_audio
    from maebench.downstream.toy import ks2_clip
    from maebench.pretrain_data import list_audio

    limit = max(1, round(clip_seconds * SAMPLE_RATE))
    items = list_audio(source, quiet=True)
    clips = []
    # a stride that is no multiple of the built-in corpus's 10-clip cycle of kinds: a word list and a sound there
    for index in sorted({(i * (len(items) // count + 2)) % len(items) for i in range(count)}):
        wav = read_audio(items[index].path, sample_rate=SAMPLE_RATE)[:limit]
        clips.append((f"corpus: {items[index].path.name}", wav))
    word, wav = ks2_clip(SEED)
    clips.append((f"toy KS2: '{word}'", torch.from_numpy(wav)[:limit]))
    return clips


def write_run_figure(run_dir: str | Path, source: str | None, clip_seconds: float) -> Path:
    """RUN/reconstruction.png of a `maebench pretrain` run: its init against its newest checkpoint."""
    from maebench.upstream.registry import load_native

    run_dir = Path(run_dir)
    last = latest_checkpoint(run_dir)
    if last is None or not (run_dir / RUN_INIT).is_dir():
        raise MaebenchError(f"{run_dir} has no checkpoint or no {RUN_INIT}/: nothing to draw")
    models = {"random init": load_native(run_dir / RUN_INIT), f"step {step_of(last)}": load_native(last)}
    clips = figure_clips(source, clip_seconds)
    shortest = next(iter(models.values())).min_input_samples()
    rows = [clip_panels(models, label, wav, SEED + i)  # a mask of its own per clip
            for i, (label, wav) in enumerate(clips) if wav.numel() >= shortest]
    if not rows:
        raise MaebenchError(f"the clips of {source or 'the built-in corpus'} are too short to draw")
    family = next(iter(models.values())).family
    head = "reconstruction head" if family == "mae_ast" else "generative head (gpredlayer)"
    return plot(rows, run_dir / RUN_RECONSTRUCTION,
                f"{run_dir.name}: masked tokens predicted by the {head}, at the random init and after training")


def report_figures(run_dir: str | Path, manifest: dict[str, Any], out: Path) -> dict[str, str]:
    """The reconstruction figure of every done pretraining stage of a pipeline run, copied next to its report as
    reconstruction_<stage>.png; {title: file name} in stage order."""
    import shutil

    figures = {}
    for key, entry in manifest.get("stages", {}).items():
        run = (entry.get("outputs") or {}).get("run")
        if not key.startswith("pretrain/") or entry.get("status") != "done" or not run:
            continue
        source = Path(run_dir) / run / RUN_RECONSTRUCTION
        if source.is_file():
            name = key.split("/", 1)[1]
            shutil.copyfile(source, out / f"reconstruction_{name}.png")
            figures[f"{name}: masked tokens predicted at the random init and after training"] = \
                f"reconstruction_{name}.png"
    return figures
