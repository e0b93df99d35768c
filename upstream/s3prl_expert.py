"""s3prl plugin (an s3prl "expert"): any maebench upstream (path or preset) as the s3prl upstream `maebench_local`.

s3prl finds upstreams only by `getattr(s3prl.hub, name)`, so `register()` sets `s3prl.hub.maebench_local`; after
that `S3PRLUpstream("maebench_local", path_or_url=CKPT)`, s3prl's `Featurizer`, the legacy runner
(`python -m maebench.s3prl`, i.e. `run_downstream.py -u maebench_local -k CKPT`) and `s3prl.problem` all see it.
s3prl 0.4.18 needs a torchaudio shim on torchaudio >= 2.9 (`maebench.upstream.torchaudio_compat`), installed here
before s3prl is imported.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.errors import MaebenchError

from .interface import Upstream
from .torchaudio_compat import import_s3prl_hub

__all__ = ["UPSTREAM_NAME", "MaebenchExpert", "import_s3prl_hub", "maebench_local", "register"]

UPSTREAM_NAME = "maebench_local"


# ------------------------------------------------------------------------------------------------------------------
# The expert
# ------------------------------------------------------------------------------------------------------------------


class MaebenchExpert(nn.Module):
    """s3prl UpstreamExpert around a maebench Upstream.

    forward(list of unpadded 1-D 16 kHz waves) -> {"hidden_states": [(B, T, D)] * num_layers,
    "last_hidden_state": (B, T, D)}. Waves shorter than the model's minimum are zero-padded to it (and counted as
    that long: `Upstream.min_input_samples()`), so s3prl's 0.001-0.05 s probes still give a frame per layer.

    s3prl expects T = ceil(max_len / downsample_rate) frames, item b valid up to (len_b - 1) // rate + 1; the
    models give whole tokens only (one or two fewer: the 25 ms fbank window, and SSAST's 9 patches per 1 s
    window). The missing tail frames of each item repeat its last real frame (as s3prl's own length matching
    does), so frame-level and pooled downstream heads see no artificial zeros.
    """

    def __init__(self, upstream: Upstream) -> None:
        super().__init__()
        self.upstream = upstream
        self.min_samples = int(upstream.min_input_samples())

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
