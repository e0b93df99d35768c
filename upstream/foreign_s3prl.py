"""Any s3prl upstream as a maebench Upstream: `load("s3prl:NAME")` or `load("s3prl:NAME:PATH")`.

`NAME` is an entry of `s3prl.hub` (`wavlm_base_plus`, `hubert`, ... downloaded by s3prl itself when online and
cached under ~/.cache/s3prl; the `*_local` entries such as `mae_ast_local` and `wav2vec2_local` take a local
checkpoint `PATH`, which never touches the network). The model is built through `s3prl.nn.S3PRLUpstream`, so
hidden states, valid lengths and downsample rates are exactly what s3prl's own downstreams see, including its length
convention (item b has (len_b - 1) // rate + 1 frames; missing tail frames repeat the last one). Needs the `s3prl`
extra; the torchaudio >= 2.9 shim is installed first. A local checkpoint PATH is read by maebench's allow-list
unpickler first (pickled code is refused) because s3prl itself loads it with weights_only=False.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maebench.errors import MaebenchError

from .interface import Features, Upstream

__all__ = ["PREFIX", "S3prlUpstream", "load_s3prl", "parse_s3prl_spec"]

PREFIX = "s3prl:"


def parse_s3prl_spec(spec: str) -> tuple[str, str | None]:
    """'s3prl:NAME[:PATH]' -> (NAME, PATH or None)."""
    if not spec.startswith(PREFIX):
        raise MaebenchError(f"{spec!r} is not an s3prl upstream; write s3prl:NAME or s3prl:NAME:PATH")
    name, _, path = spec[len(PREFIX):].partition(":")
    if not name:
        raise MaebenchError(f"{spec!r}: no s3prl upstream name; write e.g. s3prl:wavlm_base_plus or "
                            "s3prl:mae_ast_local:model.pt")
    return name, (path or None)


class S3prlUpstream(Upstream):
    """`s3prl.nn.S3PRLUpstream` behind the maebench interface: forward(wavs[B, N], lens[B]) -> Features."""

    family = "s3prl"

    def __init__(self, name: str, path: str | None = None, **extra_conf: Any) -> None:
        super().__init__()
        from .torchaudio_compat import import_s3prl_hub

        hub = import_s3prl_hub()
        if not callable(getattr(hub, name, None)):
            raise MaebenchError(f"s3prl has no upstream named {name!r}; list them with "
                                "`python -c 'import s3prl.hub as h; print(dir(h))'`")
        if path is not None and not Path(path).expanduser().exists() and "://" not in path:
            raise MaebenchError(f"s3prl:{name}: checkpoint {path} not found; pass an existing file")
        if path is not None and Path(path).expanduser().is_file():
            _vet_checkpoint(name, Path(path).expanduser())
        from s3prl.nn import S3PRLUpstream

        self.name = name
        self.path = str(Path(path).expanduser().resolve()) if path and "://" not in path else path
        self.extra_conf = dict(extra_conf)
        try:
            self.model = S3PRLUpstream(name, path_or_url=self.path, extra_conf=self.extra_conf or None)
        except MaebenchError:
            raise
        except Exception as err:  # s3prl raises anything from a missing download to a bad checkpoint
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise MaebenchError(f"s3prl:{name}: s3prl could not build the upstream ({reason})") from err
        sizes, rates = set(self.model.hidden_sizes), set(self.model.downsample_rates)
        if len(sizes) != 1 or len(rates) != 1:
            raise MaebenchError(f"s3prl:{name}: layers differ in size {sorted(sizes)} or rate {sorted(rates)}; "
                                "maebench probes need one size and rate for every layer")
        self.hidden_size = sizes.pop()
        self.downsample_rate = int(rates.pop())
        self.num_layers = int(self.model.num_layers)
        self.eval()  # S3PRLUpstream leaves its model in training mode after probing it

    def forward(self, wavs: Tensor, lens: Tensor) -> Features:
        hidden_states, all_lens = self.model(wavs, lens.to(wavs.device))
        return Features(hidden_states=list(hidden_states), lens=all_lens[0].to(torch.long))

    def output_lens(self, lens: Tensor) -> Tensor:
        return torch.div(lens.clamp(min=1) - 1, self.downsample_rate, rounding_mode="floor") + 1

    def to_config(self) -> dict[str, Any]:
        """Identity for results and the feature cache (with the weights' hash, see registry.fingerprint)."""
        return {"name": self.name, "path": self.path, "extra_conf": self.extra_conf}


def _vet_checkpoint(name: str, path: Path) -> None:
    """s3prl opens local checkpoints with torch.load(weights_only=False), which runs any code pickled in the file:
    the file goes through maebench's allow-list reader first (upstream/official.py), and what it refuses is
    refused here, before s3prl sees it."""
    from .official import read_checkpoint

    try:
        read_checkpoint(path)
    except MaebenchError as err:
        raise MaebenchError(f"s3prl:{name}: {err}") from None


def load_s3prl(spec: str, **extra_conf: Any) -> S3prlUpstream:
    """`s3prl:NAME[:PATH]` as an Upstream in eval mode; keywords go to the s3prl entry (its `extra_conf`)."""
    name, path = parse_s3prl_spec(spec)
    return S3prlUpstream(name, path, **extra_conf)
