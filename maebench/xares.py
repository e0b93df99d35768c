"""maebench upstreams as X-ARES encoders (github.com/jimbozhang/xares, 0.1.3).

X-ARES imports an encoder file and instantiates, with no arguments, its one attribute whose name ends in
"Encoder"; it caches embeddings and scores under the class name. So `encoder(...)` returns a class whose name is
unique per weights (family, fingerprint prefix, layer), e.g. a file `my_encoder.py`:

    from maebench.xares import encoder
    MaebenchEncoder = encoder("runs/pretrain/demo", layer=-1)   # any maebench upstream spec

and then `python -m xares.run my_encoder.py src/tasks/*.py` (`--max-jobs 0` on machines without a GPU). The
encoder maps 16 kHz waveforms [B, T] to frames [B, T', D]: one layer of the upstream's hidden states (or their
mean), `hop_size_in_ms` from its downsample rate. `hear:` upstreams give their timestamp embeddings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maebench.errors import MaebenchError

__all__ = ["encoder", "encoder_class_name"]


def encoder_class_name(family: str, fingerprint: str, layer: int | str) -> str:
    """`Maebench<Family><fingerprint[:12]>Layer<n|Mean>Encoder`: a Python identifier unique per weights and layer."""
    words = re.split(r"[^A-Za-z0-9]+", family or "upstream")
    camel = "".join(word[:1].upper() + word[1:] for word in words if word)
    layer_tag = "Mean" if layer == "mean" else (f"M{-int(layer)}" if int(layer) < 0 else str(int(layer)))
    return f"Maebench{camel}{fingerprint[:12]}Layer{layer_tag}Encoder"


def _load(spec: str | Path, options: dict[str, Any]):
    from maebench.upstream.registry import fingerprint, load

    if str(spec).startswith("hear:"):
        options = {"embedding": "timestamp", **options}  # X-ARES wants frames, not one scene vector
    with torch.random.fork_rng(devices=[]):  # presets are random inits: seeded, as `maebench eval` does
        torch.manual_seed(0)
        model = load(str(spec), **options)
    return model.eval(), fingerprint(model)


def encoder(upstream: str | Path, layer: int | str = -1, **load_options: Any) -> type[nn.Module]:
    """An X-ARES encoder class for any maebench upstream spec (checkpoint, run, official file, preset, `s3prl:`,
    `hear:`); `layer` is a hidden-state index (negative from the end) or "mean"."""
    model, fingerprint = _load(upstream, dict(load_options))
    if layer != "mean":
        if not isinstance(layer, int) or not -model.num_layers <= layer < model.num_layers:
            raise MaebenchError(f"X-ARES encoder layer={layer!r}: use 'mean' or an index in "
                                f"[-{model.num_layers}, {model.num_layers})")
    name = encoder_class_name(getattr(model, "family", "") or type(model).__name__, fingerprint, layer)

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.upstream = model
        self.sampling_rate = int(model.sample_rate)
        self.output_dim = int(model.hidden_size)
        self.hop_size_in_ms = 1000.0 * float(model.downsample_rate) / float(model.sample_rate)
        self.layer = layer
        self.source = str(upstream)

    def forward(self, audio: Tensor) -> Tensor:
        """[B, T] waveforms at `sampling_rate` -> [B, T', output_dim] frames."""
        if audio.dim() == 1:
            audio = audio[None]
        lens = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long, device=audio.device)
        with torch.no_grad():
            hidden = self.upstream(audio.float(), lens).hidden_states
            frames = torch.stack(hidden).mean(0) if self.layer == "mean" else hidden[self.layer]
        return frames.float()

    doc = f"X-ARES encoder of maebench upstream {upstream} (layer {layer}, weights {fingerprint[:12]})."
    return type(name, (nn.Module,), {"__init__": __init__, "forward": forward, "__doc__": doc,
                                     "__module__": __name__})
