"""HEAR benchmark API (hearbenchmark.com) for any maebench upstream: `load_model`, `get_scene_embeddings`,
`get_timestamp_embeddings`.

    import maebench.hear as hear
    model = hear.load_model("runs/my_mae_ast")            # or an official file, or a preset like "mae_ast_patch"
    scene = hear.get_scene_embeddings(audio, model)        # (n, D) float32
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # (n, T, D), (n, T) ms

Embeddings are the mean over the upstream's layers (or one layer: `load_model(path, layer=6)`). Timestamps are the
centres of the frames' analysis windows. HEAR needs them evenly spaced; SSAST's windowed features are not (9 patch
columns per 1 s window, then a jump), so for windowed models the features are linearly interpolated in time onto
an even grid at the model's nominal rate, keeping every embedding at the time it describes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from maebench.errors import MaebenchError
from maebench.upstream.frontend import MAE_AST_FBANK, frames_to_samples

__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]


class HearModel(nn.Module):
    """A maebench Upstream with the attributes HEAR asks for."""

    def __init__(self, upstream: nn.Module, layer: int | str = "mean", batch_size: int = 16) -> None:
        super().__init__()
        self.upstream = upstream.eval()
        self.sample_rate = int(upstream.sample_rate)
        self.scene_embedding_size = int(upstream.hidden_size)
        self.timestamp_embedding_size = int(upstream.hidden_size)
        if layer != "mean" and not (isinstance(layer, int) and -upstream.num_layers <= layer < upstream.num_layers):
            raise MaebenchError(
                f"HEAR layer={layer!r}: use 'mean' or a layer index in [0, {upstream.num_layers})"
            )
        if batch_size < 1:
            raise MaebenchError(f"HEAR batch_size={batch_size} must be at least 1")
        self.layer = layer
        self.batch_size = batch_size

    def _embed(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(n, samples) -> per-frame embeddings (n, T, D) and valid frame counts (n,)."""
        lens = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
        feats = self.upstream(audio, lens)
        hidden = feats.hidden_states
        emb = torch.stack(hidden).mean(dim=0) if self.layer == "mean" else hidden[int(self.layer)]
        return emb.float(), feats.lens.to(audio.device)

    def frame_centres(self, num_frames: int) -> Tensor:
        """Sample index of each output frame's centre (float64, (T,)), from the model's feature geometry."""
        upstream = self.upstream
        t = torch.arange(num_frames, dtype=torch.float64)
        config = getattr(upstream, "config", None)
        fbank = getattr(upstream, "frontend", MAE_AST_FBANK)
        if getattr(upstream, "family", "") == "ssast" and config is not None:
            cols = config.feature_grid[1]
            window, col = torch.div(t, cols, rounding_mode="floor"), torch.remainder(t, cols)
            first = frames_to_samples(config.tshape, fbank) / 2  # centre of a patch column's tshape frames
            return window * config.window_samples + col * config.tstride * fbank.window_shift + first
        ktime = getattr(upstream, "ktime", None)
        if ktime is not None:  # MAE-AST: token t spans fbank frames [t*k, (t+1)*k)
            return t * upstream.downsample_rate + frames_to_samples(ktime, fbank) / 2
        return (t + 0.5) * upstream.downsample_rate


def _even_grid(emb: Tensor, centres: Tensor, rate: int, last: float) -> tuple[Tensor, Tensor]:
    """Linear interpolation of (n, T, D) frames at `centres` onto times centres[0] + k * rate <= last."""
    start = float(centres[0])
    count = int((last - start) // rate) + 1
    grid = start + rate * torch.arange(count, dtype=torch.float64)
    right = torch.searchsorted(centres, grid).clamp(1, len(centres) - 1)
    left = right - 1
    span = (centres[right] - centres[left]).clamp(min=1e-9)
    weight = ((grid - centres[left]) / span).clamp(0.0, 1.0).to(emb.device, emb.dtype)[None, :, None]
    left, right = left.to(emb.device), right.to(emb.device)
    return emb[:, left] * (1 - weight) + emb[:, right] * weight, grid


def load_model(model_file_path: str = "", **options: Any) -> HearModel:
    """A HEAR model from anything `maebench.upstream.load` accepts (checkpoint dir, training run, official file,
    preset). Options: `layer` ('mean' or an index), `batch_size`, and load options such as window_secs. Without
    a path, the latest `maebench pretrain` run is used."""
    from maebench.paths import latest_pretrain_run
    from maebench.upstream import load

    layer = options.pop("layer", "mean")
    batch_size = int(options.pop("batch_size", 16))
    source = model_file_path or latest_pretrain_run()
    if not source:
        raise MaebenchError(
            "HEAR load_model needs a checkpoint: pass a path or preset (e.g. load_model('mae_ast_patch:base')); "
            "no `maebench pretrain` run was found to default to"
        )
    return HearModel(load(str(source), **options), layer=layer, batch_size=batch_size)


def _as_batch(audio: Any, model: HearModel) -> Tensor:
    audio = torch.as_tensor(audio)
    if audio.dim() != 2:
        raise MaebenchError(f"HEAR audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    device = next(model.upstream.parameters()).device
    return audio.to(device=device, dtype=torch.float32)


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[Tensor, Tensor]:
    """(embeddings (n, T, D) float32, timestamps (n, T) ms): one embedding per output frame, at its centre."""
    audio = _as_batch(audio, model)
    n, samples = audio.shape
    with torch.no_grad():
        chunks = [model._embed(audio[i : i + model.batch_size])[0] for i in range(0, n, model.batch_size)]
        emb = torch.cat(chunks) if chunks else audio.new_zeros(0, 1, model.timestamp_embedding_size)
    centres = model.frame_centres(emb.shape[1])
    # frames centred past the audio come from padding (SSAST's last window): drop them
    keep = int((centres <= samples).sum().clamp(min=1))
    emb, centres = emb[:, :keep], centres[:keep]
    rate = int(model.upstream.downsample_rate)
    if keep > 1 and float((centres.diff() - rate).abs().max()) > 1e-6:
        emb, centres = _even_grid(emb, centres, rate, float(centres[-1]))
    timestamps = (centres * 1000.0 / model.sample_rate).to(device=emb.device, dtype=torch.float32)
    return emb.contiguous(), timestamps[None].expand(n, -1).contiguous()


def get_scene_embeddings(audio: Any, model: HearModel) -> Tensor:
    """(n, D) float32: the mean of each sound's valid frame embeddings."""
    audio = _as_batch(audio, model)
    outputs = []
    with torch.no_grad():
        for i in range(0, audio.shape[0], model.batch_size):
            emb, lens = model._embed(audio[i : i + model.batch_size])
            mask = torch.arange(emb.shape[1], device=emb.device)[None, :] < lens[:, None]
            total = (emb * mask[..., None]).sum(dim=1)
            outputs.append(total / mask.sum(dim=1, keepdim=True).clamp(min=1))
    if not outputs:
        return audio.new_zeros(0, model.scene_embedding_size)
    return torch.cat(outputs)
