"""HEAR API (maebench.hear) under the HEAR validator's checks, reimplemented here; and the torch.hub entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_in_run

import maebench.hear as hear
from maebench.errors import MaebenchError
from maebench.paths import record_latest_pretrain_run
from maebench.upstream import load, save_upstream

REPO = Path(__file__).resolve().parents[1]
SMALL = {"mae_ast_patch:tiny": {"depth": 2}, "mae_ast_frame:tiny": {"depth": 2},
         "ssast_patch:tiny": {"depth": 2}, "ssast_frame:tiny": {"depth": 2}}


class ValidationError(AssertionError):
    pass


def validate_timestamps(module, model, num_audio: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    """hear-validator's _check_timestamp_embeddings for a torch model."""
    audio = torch.rand((num_audio, int(length * model.sample_rate))) * 2 - 1
    embeddings, timestamps = module.get_timestamp_embeddings(audio, model)
    if embeddings.dtype != torch.float32:
        raise ValidationError(f"embeddings are {embeddings.dtype}")
    embeddings, timestamps = embeddings.detach().cpu().numpy(), timestamps.detach().cpu().numpy()
    if embeddings.ndim != 3 or timestamps.ndim != 2:
        raise ValidationError(f"shapes {embeddings.shape}, {timestamps.shape}")
    if embeddings.shape[0] != num_audio or embeddings.shape[:2] != timestamps.shape:
        raise ValidationError(f"shapes {embeddings.shape}, {timestamps.shape}")
    if embeddings.shape[2] != model.timestamp_embedding_size:
        raise ValidationError("embedding size differs from timestamp_embedding_size")
    if timestamps.shape[1] > 1:
        diff = np.diff(timestamps)
        avg = np.mean(diff)
        if np.max(np.abs(diff - avg)) > 1:
            raise ValidationError("timestamps are not evenly spaced")
        if np.max(timestamps) < 1000 * length - 2 * avg:
            raise ValidationError(f"timestamps end at {np.max(timestamps)} ms for {1000 * length} ms of audio")
        if np.max(timestamps) > 1000 * length:
            raise ValidationError("timestamps past the end of the audio")
    return embeddings, timestamps


def validate(module, model) -> None:
    """hear-validator's validate_model: sample rate, declared sizes, timestamp and scene embeddings."""
    if not isinstance(model, torch.nn.Module):
        raise ValidationError("load_model must return a torch.nn.Module")
    if model.sample_rate not in (16000, 22050, 44100, 48000):
        raise ValidationError(f"sample rate {model.sample_rate}")
    if not isinstance(model.scene_embedding_size, int) or not isinstance(model.timestamp_embedding_size, int):
        raise ValidationError("embedding sizes must be ints")
    for length in (1.07, 1.98, 4.0):
        validate_timestamps(module, model, num_audio=2, length=length)
    audio = torch.rand((4, int(2.74 * model.sample_rate))) * 2 - 1
    scene = module.get_scene_embeddings(audio, model)
    if scene.dtype != torch.float32:
        raise ValidationError(f"scene embeddings are {scene.dtype}")
    if scene.detach().cpu().numpy().shape != (4, model.scene_embedding_size):
        raise ValidationError(f"scene embedding shape {tuple(scene.shape)}")


@pytest.mark.parametrize("preset", list(SMALL))
def test_hear_validator_checks_pass(preset):
    model = hear.load_model(preset, **SMALL[preset])
    assert model.scene_embedding_size == model.upstream.hidden_size
    validate(hear, model)


def test_validator_reimplementation_catches_uneven_timestamps(monkeypatch):
    """The checks above can fail: raw SSAST window frames (no regridding) are not evenly spaced."""
    model = hear.load_model("ssast_patch:tiny", depth=1)
    monkeypatch.setattr(hear, "_even_grid", lambda emb, centres, rate, last: (emb, centres))
    with pytest.raises(ValidationError, match="evenly spaced"):
        validate_timestamps(hear, model, num_audio=2, length=1.98)


def test_timestamps_are_frame_centres():
    # MAE-AST patch: token k covers fbank frames 16k..16k+15, i.e. samples 2560k .. 2560k + 15*160 + 400
    model = hear.load_model("mae_ast_patch:tiny", depth=1)
    _, ts = hear.get_timestamp_embeddings(torch.zeros(1, 16000), model)
    assert torch.allclose(ts[0], 87.5 + 160.0 * torch.arange(6))
    # MAE-AST frame: 2 frames per token -> centre at (160 + 400) / 2 samples = 17.5 ms, every 20 ms
    model = hear.load_model("mae_ast_frame:tiny", depth=1)
    _, ts = hear.get_timestamp_embeddings(torch.zeros(1, 16000), model)
    assert torch.allclose(ts[0], 17.5 + 20.0 * torch.arange(49))


def test_windowed_ssast_frames_are_interpolated_onto_an_even_grid():
    model = hear.load_model("ssast_patch:tiny", depth=2)
    audio = torch.randn(2, int(1.98 * 16000)) * 0.1
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    with torch.no_grad():
        raw = torch.stack(model.upstream(audio, torch.full((2,), audio.shape[1])).hidden_states).mean(0)
    # raw frames: window 0 columns at 87.5 + 100 j ms (j < 9), window 1 at 1087.5 + 100 j ms: a 200 ms jump
    assert torch.allclose(ts[0], 87.5 + 100.0 * torch.arange(19))
    assert torch.allclose(emb[:, :9], raw[:, :9])  # grid points on window 0's centres
    assert torch.allclose(emb[:, 10:], raw[:, 9:18], atol=1e-6)  # ... and on window 1's
    assert torch.allclose(emb[:, 9], (raw[:, 8] + raw[:, 9]) / 2, atol=1e-6)  # 987.5 ms: halfway between


def test_scene_embedding_is_the_mean_of_the_chosen_layer():
    model = hear.load_model("mae_ast_frame:tiny", depth=3, layer=1, batch_size=1)
    audio = torch.randn(3, 8000) * 0.1
    scene = hear.get_scene_embeddings(audio, model)
    with torch.no_grad():
        feats = model.upstream(audio, torch.full((3,), 8000))
    assert torch.allclose(scene, feats.hidden_states[1].mean(dim=1), atol=1e-5)
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    assert torch.allclose(emb, feats.hidden_states[1], atol=1e-5)
    with pytest.raises(MaebenchError, match="layer=7"):
        hear.load_model("mae_ast_frame:tiny", depth=3, layer=7)


def test_load_model_defaults_to_the_latest_pretrain_run(tmp_path):
    with pytest.raises(MaebenchError, match="needs a checkpoint"):
        hear.load_model()
    source = load("mae_ast_frame:tiny", depth=1)
    run = tmp_path / "run"
    save_in_run(source, run, step=10)
    record_latest_pretrain_run(run)
    model = hear.load_model()
    assert torch.equal(model.upstream.state_dict()["patch_embed.weight"], source.state_dict()["patch_embed.weight"])


# ---------------------------------------------------------------------------------------------------------------
# torch.hub
# ---------------------------------------------------------------------------------------------------------------


def test_torch_hub_entry_points(tmp_path):
    hubconf = torch.hub._import_module("hubconf", str(REPO / "hubconf.py"))  # what torch.hub itself imports
    assert hubconf.dependencies == ["torch", "torchaudio", "safetensors"]
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert {"mae_ast_patch", "mae_ast_frame", "ssast_patch", "ssast_frame", "maebench_local"} <= entries
    model = torch.hub.load(str(REPO), "ssast_frame", source="local", size="tiny", depth=1)
    assert model.family == "ssast" and model.config.dim == 192 and model.num_layers == 1
    model = torch.hub.load(str(REPO), "mae_ast_patch", source="local", size="tiny", depth=1)
    save_upstream(model, tmp_path / "ckpt")
    local = torch.hub.load(str(REPO), "maebench_local", source="local", ckpt=str(tmp_path / "ckpt"))
    wav = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        a, b = model.eval()(wav, torch.tensor([16000])), local(wav, torch.tensor([16000]))
    assert torch.equal(a.hidden_states[0], b.hidden_states[0])


def test_torch_hub_works_from_a_plain_clone():
    """torch.hub does not pip-install the repository: hubconf maps upstream/ into maebench itself."""
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable')]\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('maebench') is None, 'maebench is still importable without the repo'\n"
        "import torch\n"
        f"m = torch.hub.load({str(REPO)!r}, 'mae_ast_frame', source='local', size='tiny', depth=1)\n"
        "import maebench.upstream\n"
        "print(type(m).__name__, maebench.upstream.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd="/", env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    name, location = out.stdout.split()
    assert name == "MaeAst" and Path(location) == REPO / "upstream" / "__init__.py"
