"""torchaudio compatibility shim: what s3prl 0.4.18 needs from torchaudio and torchaudio >= 2.9 no longer has.

s3prl 0.4.18 cannot even be imported on torchaudio >= 2.9 (`torchaudio.set_audio_backend` and
`torchaudio.sox_effects` are gone; s3prl issue #575). `install_torchaudio_shim()` restores what the import and
the legacy runner touch, only where it is missing: a no-op backend selector, a `sox_effects` module that applies
the effects s3prl's SUPERB datasets use (`maebench.upstream.sox_effects`: channels, rate, gain, norm, silence, ...;
any other effect raises an error naming it), and `info`/`load` through soundfile when torchcodec is absent.
The s3prl plugin (`maebench.upstream.s3prl_expert`) installs it before importing s3prl.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
from torch import Tensor

from maebench.errors import MaebenchError

__all__ = ["import_s3prl_hub", "install_torchaudio_shim"]


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
        from . import sox_effects as effects

        stub = types.ModuleType("torchaudio.sox_effects")
        stub.__doc__ = "maebench's replacement for torchaudio.sox_effects (removed in torchaudio 2.9)"
        stub.apply_effects_file = effects.apply_effects_file  # type: ignore[attr-defined]
        stub.apply_effects_tensor = effects.apply_effects_tensor  # type: ignore[attr-defined]
        stub.effect_names = effects.effect_names  # type: ignore[attr-defined]
        stub.init_sox_effects = stub.shutdown_sox_effects = lambda: None  # type: ignore[attr-defined]
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
    """`s3prl.hub`, imported behind the shim (MaebenchError with the install line if s3prl is missing). The one
    way into s3prl for the plugin (`s3prl_expert`) and the foreign-upstream adapter (`foreign_s3prl`)."""
    install_torchaudio_shim()
    try:
        import s3prl.hub as hub
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "s3prl":
            raise MaebenchError("s3prl is not installed; install the extra: pip install 'maebench[s3prl]'") from None
        raise
    return hub
