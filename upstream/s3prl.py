"""s3prl plugin: any maebench upstream (path or preset) as the s3prl upstream `maebench_local`.

s3prl finds upstreams only by `getattr(s3prl.hub, name)`, so `register()` sets `s3prl.hub.maebench_local`; after
that `S3PRLUpstream("maebench_local", path_or_url=CKPT)`, s3prl's `Featurizer`, the legacy runner
(`run_downstream.py -u maebench_local -k CKPT`) and `s3prl.problem` all see it.

s3prl 0.4.18 cannot even be imported on torchaudio >= 2.9 (`torchaudio.set_audio_backend` and
`torchaudio.sox_effects` are gone; s3prl issue #575). `install_torchaudio_shim()` restores what the import and
the legacy runner touch, only where it is missing: a no-op backend selector, a `sox_effects` module whose
functions explain themselves when called, and `info`/`load` through soundfile when torchcodec is absent.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.errors import MaebenchError

from .interface import Upstream

__all__ = ["UPSTREAM_NAME", "MaebenchExpert", "install_torchaudio_shim", "maebench_local", "register"]

UPSTREAM_NAME = "maebench_local"
_FBANK_WINDOW = 400  # samples in one 25 ms fbank frame: nothing shorter yields a frame


# ------------------------------------------------------------------------------------------------------------------
# torchaudio compatibility shim
# ------------------------------------------------------------------------------------------------------------------


def _sox_effects_unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "torchaudio.sox_effects was removed in torchaudio 2.9; this s3prl code path needs an older torchaudio "
        "(maebench's shim only makes s3prl importable)"
    )


class _AudioInfo:
    """The fields s3prl reads from torchaudio.info's AudioMetaData."""

    def __init__(self, sample_rate: int, num_frames: int, num_channels: int) -> None:
        self.sample_rate = sample_rate
        self.num_frames = num_frames
        self.num_channels = num_channels
        self.bits_per_sample = 16
        self.encoding = "PCM_S"


def _soundfile_info(path: Any, *args: Any, **kwargs: Any) -> _AudioInfo:
    import soundfile

    info = soundfile.info(str(path))
    return _AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def _soundfile_load(
    path: Any, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True, channels_first: bool = True,
    *args: Any, **kwargs: Any,
) -> tuple[Tensor, int]:
    """torchaudio.load's contract (float32 in [-1, 1], (channels, time)) through soundfile."""
    import soundfile

    data, rate = soundfile.read(
        str(path), start=int(frame_offset), frames=int(num_frames), dtype="float32", always_2d=True
    )
    wav = torch.from_numpy(data)
    return (wav.T.contiguous() if channels_first else wav), int(rate)


def _has_torchcodec() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchcodec") is not None


def install_torchaudio_shim() -> list[str]:
    """Patch torchaudio (in this process) with what s3prl 0.4.18 needs and torchaudio >= 2.9 lacks.

    Idempotent; touches nothing that exists. Returns the names it added (empty on an older torchaudio).
    """
    import torchaudio

    added: list[str] = []
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None  # type: ignore[attr-defined]
        added.append("set_audio_backend")
    if not hasattr(torchaudio, "get_audio_backend"):
        torchaudio.get_audio_backend = lambda: "soundfile"  # type: ignore[attr-defined]
        added.append("get_audio_backend")
    if not hasattr(torchaudio, "list_audio_backends"):
        torchaudio.list_audio_backends = lambda: ["soundfile"]  # type: ignore[attr-defined]
        added.append("list_audio_backends")
    if "torchaudio.sox_effects" not in sys.modules and not hasattr(torchaudio, "sox_effects"):
        stub = types.ModuleType("torchaudio.sox_effects")
        stub.__doc__ = "maebench stub: sox effects are not available on torchaudio >= 2.9"
        for name in ("apply_effects_tensor", "apply_effects_file", "effect_names", "init_sox_effects",
                     "shutdown_sox_effects"):
            setattr(stub, name, _sox_effects_unavailable)
        sys.modules["torchaudio.sox_effects"] = stub
        torchaudio.sox_effects = stub  # type: ignore[attr-defined]
        added.append("sox_effects")
    if not hasattr(torchaudio, "info"):
        torchaudio.info = _soundfile_info  # type: ignore[attr-defined]
        added.append("info")
    if not _has_torchcodec() and not getattr(torchaudio.load, "_maebench_shim", False):
        # torchaudio >= 2.9's load needs torchcodec + FFmpeg; s3prl's downstream datasets call it for wav/flac
        _soundfile_load._maebench_shim = True  # type: ignore[attr-defined]
        torchaudio.load = _soundfile_load  # type: ignore[assignment]
        added.append("load")
    return added


def import_s3prl_hub() -> types.ModuleType:
    """`s3prl.hub`, imported behind the shim (MaebenchError with the install line if s3prl is missing)."""
    install_torchaudio_shim()
    try:
        import s3prl.hub as hub
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "s3prl":
            raise MaebenchError(
                "s3prl is not installed; install the extra: pip install 'maebench[s3prl]'"
            ) from None
        raise
    return hub


# ------------------------------------------------------------------------------------------------------------------
# The expert
# ------------------------------------------------------------------------------------------------------------------


def _min_samples(upstream: Upstream) -> int:
    """Fewest samples that give every layer at least one real output frame.

    Windowed models (SSAST) pad each window themselves; token models need one token's frames: for kernel k and
    stride s frames (k <= s + 1 for the supported geometries), downsample_rate + 400 samples suffice.
    """
    ktime = getattr(upstream, "ktime", None)
    if ktime is not None:  # MAE-AST: one token = ktime fbank frames
        return _FBANK_WINDOW + (int(ktime) - 1) * 160
    return int(upstream.downsample_rate) + _FBANK_WINDOW


class MaebenchExpert(nn.Module):
    """s3prl UpstreamExpert around a maebench Upstream.

    forward(list of unpadded 1-D 16 kHz waves) -> {"hidden_states": [(B, T, D)] * num_layers,
    "last_hidden_state": (B, T, D)}. Waves shorter than the model's minimum are zero-padded to it (and counted as
    that long), so s3prl's 0.001-0.05 s probes still give a frame per layer.

    s3prl expects T = ceil(max_len / downsample_rate) frames, item b valid up to (len_b - 1) // rate + 1; the
    models give whole tokens only (one or two fewer: the 25 ms fbank window, and SSAST's 9 patches per 1 s
    window). The missing tail frames of each item repeat its last real frame (as s3prl's own length matching
    does), so frame-level and pooled downstream heads see no artificial zeros.
    """

    def __init__(self, upstream: Upstream) -> None:
        super().__init__()
        self.upstream = upstream
        self.min_samples = _min_samples(upstream)

    def get_downsample_rates(self, key: str | None = None) -> int:
        return int(self.upstream.downsample_rate)

    def forward(self, wavs: Sequence[Tensor]) -> dict[str, Any]:
        if len(wavs) == 0:
            raise ValueError("maebench_local: empty batch")
        lens = [int(w.shape[-1]) for w in wavs]
        counted = [max(n, self.min_samples) for n in lens]
        width = max(counted)
        padded = torch.stack([F.pad(w.reshape(-1).float(), (0, width - int(w.shape[-1]))) for w in wavs])
        features = self.upstream(padded, torch.tensor(counted, device=padded.device))
        rate = self.get_downsample_rates()
        expected = torch.div(torch.tensor(lens, device=padded.device).clamp(min=1) - 1, rate, rounding_mode="floor") + 1
        valid = features.lens.to(padded.device).clamp(min=1)
        hidden_states = [_fill_tail(h, valid, expected) for h in features.hidden_states]
        return {"hidden_states": hidden_states, "last_hidden_state": hidden_states[-1]}


def _fill_tail(h: Tensor, valid: Tensor, expected: Tensor) -> Tensor:
    """(B, T, D) -> (B, max expected, D): frames valid_b..expected_b-1 repeat frame valid_b - 1."""
    batch, frames, dim = h.shape
    out_frames = int(expected.max())
    if out_frames > frames:
        h = F.pad(h, (0, 0, 0, out_frames - frames))
    elif out_frames < frames:  # inputs padded up to the model's minimum give more frames than s3prl expects
        h = h[:, :out_frames]
    pos = torch.arange(out_frames, device=h.device)[None, :]
    source = torch.minimum(pos, (valid - 1).clamp(max=min(frames, out_frames) - 1)[:, None])
    fill = (pos >= valid[:, None]) & (pos < expected[:, None])
    if not bool(fill.any()):
        return h
    gathered = h.gather(1, source[..., None].expand(batch, out_frames, dim))
    return torch.where(fill[..., None], gathered, h)


def _read_options(model_config: str | None) -> dict[str, Any]:
    """The legacy runner's `-g FILE`: a YAML/JSON mapping of `maebench.upstream.load` options."""
    if not model_config:
        return {}
    path = Path(model_config)
    if not path.is_file():
        raise MaebenchError(f"upstream options file {path} not found (-g expects a YAML file of load options)")
    import yaml

    try:
        options = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise MaebenchError(
            f"{path}: not valid YAML ({reason}); -g expects a mapping such as 'window_secs: 6.0'"
        ) from None
    if not isinstance(options, dict):
        raise MaebenchError(f"{path}: expected a mapping of load options such as 'window_secs: 6.0'")
    return options


def maebench_local(
    ckpt: str | None = None, model_config: str | None = None, refresh: bool = False, **options: Any
) -> MaebenchExpert:
    """The s3prl entry: `ckpt` = anything `maebench.upstream.load` accepts (checkpoint directory, training run,
    official SSAST/MAE-AST file, or a preset such as `mae_ast_patch:tiny`); extra keywords and the YAML file
    `model_config` are load options (e.g. window_secs)."""
    del refresh  # nothing is downloaded
    if not ckpt:
        raise MaebenchError("maebench_local needs a checkpoint: pass -k PATH_OR_PRESET (or path_or_url=...)")
    from maebench.upstream import load

    upstream = load(ckpt, **{**_read_options(model_config), **options})
    return MaebenchExpert(upstream)


def register() -> types.ModuleType:
    """Install the shim, import s3prl.hub and add `maebench_local` to it; returns the hub module."""
    hub = import_s3prl_hub()
    setattr(hub, UPSTREAM_NAME, maebench_local)
    return hub
