"""maebench upstreams as X-ARES encoders: the contract (checked here, and by X-ARES's own checker when installed),
class names unique per weights, the layer choice, and loading the way X-ARES loads an encoder file."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from helpers import TOY_HEAR_MODULE, one_line_error, write_toy_hear_module
from test_official import mae_ast_checkpoint

from maebench.errors import MaebenchError
from maebench.upstream import load
from maebench.upstream.registry import save_upstream
from maebench.xares import encoder


@pytest.fixture
def specs(tmp_path, monkeypatch) -> dict[str, str]:
    """A native checkpoint, an official MAE-AST file and a foreign HEAR module."""
    torch.manual_seed(1)
    native = save_upstream(load("ssast_frame:tiny"), tmp_path / "native")
    official = tmp_path / "chunk_patch_75_12LayerEncoder.pt"
    torch.save(mae_ast_checkpoint("patch"), official)
    monkeypatch.syspath_prepend(str(write_toy_hear_module(tmp_path / "mods")))
    return {"native": str(native), "official": str(official), "foreign": f"hear:{TOY_HEAR_MODULE}"}


def test_contract_without_xares(specs):
    audio = torch.randn(2, 50000)
    for kind, spec in specs.items():
        cls = encoder(spec)
        model = cls()  # X-ARES instantiates with no arguments
        assert cls.__name__.endswith("Encoder") and cls.__name__.isidentifier()
        assert isinstance(model, torch.nn.Module) and model.sampling_rate == 16000
        out = model(audio)
        assert out.dim() == 3 and out.shape[0] == 2 and out.shape[2] == model.output_dim, kind
        # hop_size_in_ms describes the output rate: T' frames over 3125 ms (within a frame or two of edges)
        assert abs(out.shape[1] - 3125.0 / model.hop_size_in_ms) <= 3, (kind, out.shape, model.hop_size_in_ms)


def test_layer_choice_and_names_unique_per_weights(specs):
    native = specs["native"]
    last, first = encoder(native)(), encoder(native, layer=0)()
    upstream = load(native)
    audio = torch.randn(1, 16000)
    hidden = upstream(audio, torch.tensor([16000])).hidden_states
    torch.testing.assert_close(last(audio), hidden[-1])
    torch.testing.assert_close(first(audio), hidden[0])
    torch.testing.assert_close(encoder(native, layer="mean")()(audio), torch.stack(hidden).mean(0))
    names = {encoder(native).__name__, encoder(native, layer=0).__name__, encoder(specs["official"]).__name__}
    assert len(names) == 3
    assert encoder(native).__name__ == type(last).__name__  # the same weights, the same name (X-ARES's cache)
    torch.manual_seed(2)
    other = save_upstream(load("ssast_frame:tiny"), native.replace("native", "native2"))
    assert encoder(str(other)).__name__ != encoder(native).__name__  # same architecture, other weights
    with pytest.raises(MaebenchError) as err:
        encoder(native, layer=99)
    one_line_error(err, "layer=99")


def test_loaded_like_xares_loads_an_encoder_file(specs, tmp_path, monkeypatch):
    """X-ARES imports the file and instantiates its single attribute ending in "Encoder"."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "my_encoder.py").write_text(
        f"from maebench.xares import encoder\nMaebenchEncoder = encoder({specs['official']!r}, layer=-1)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    module = importlib.import_module("my_encoder")
    try:
        found = [name for name in dir(module) if name.endswith("Encoder")]
        assert found == ["MaebenchEncoder"]
        assert getattr(module, found[0])()(torch.randn(1, 20000)).dim() == 3
    finally:
        sys.modules.pop("my_encoder", None)


def test_xares_checker_accepts_native_official_and_foreign(specs):
    checker = pytest.importorskip("xares.audio_encoder_checker")
    for kind, spec in specs.items():
        assert checker.check_audio_encoder(encoder(spec)()), kind
