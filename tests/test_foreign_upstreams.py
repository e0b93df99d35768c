"""Foreign upstreams as maebench Upstreams: `s3prl:NAME[:PATH]` (through s3prl.nn.S3PRLUpstream) and
`hear:MODULE[:WEIGHTS]` (any HEAR-API module), offline: s3prl's local-checkpoint entries, and a small HEAR module
written by these tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import TOY_HEAR_MODULE, one_line_error, speech_batch, torchaudio_restored, write_toy_hear_module
from test_official import mae_ast_checkpoint, max_relative

from maebench.errors import MaebenchError
from maebench.upstream import load
from maebench.upstream.registry import fingerprint


@pytest.fixture
def toy_hear(tmp_path, monkeypatch):
    folder = write_toy_hear_module(tmp_path / "hearmods")
    (folder / "not_hear.py").write_text("def load_model(path=None):\n    return None\n")
    monkeypatch.syspath_prepend(str(folder))
    yield __import__(TOY_HEAR_MODULE)
    for name in (TOY_HEAR_MODULE, "not_hear"):
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------------------- HEAR
def test_hear_scene_embeddings_are_the_modules_own_per_clip(toy_hear, tmp_path):
    weights = tmp_path / "seed.txt"
    weights.write_text("3")
    upstream = load(f"hear:toy_hear_module:{weights}")
    assert (upstream.family, upstream.num_layers, upstream.hidden_size) == ("hear", 1, 8)
    wavs, lens = speech_batch([16000, 9600, 16000])  # padded: item 1 must be cut back to its 9600 samples
    with torch.no_grad():
        feats = upstream(wavs, lens)
    assert feats.hidden_states[0].shape == (3, 1, 8) and feats.lens.tolist() == [1, 1, 1]
    model = toy_hear.load_model(str(weights))
    for b, n in enumerate(lens.tolist()):
        expected = toy_hear.get_scene_embeddings(wavs[b : b + 1, :n], model)[0]
        assert torch.allclose(feats.hidden_states[0][b, 0], expected, atol=1e-6)
    # the two 1 s clips went through the module together, the short one alone
    assert sorted(upstream.hear_model.calls) == [(1, 9600), (2, 16000)]
    other = load("hear:toy_hear_module")  # no weights: load_model() with its defaults
    assert fingerprint(other) != fingerprint(upstream)


def test_hear_timestamp_embeddings_as_frames_and_long_clips_in_chunks(toy_hear):
    frames = load("hear:toy_hear_module", embedding="timestamp", chunk_seconds=1.0, batch_size=1)
    assert frames.downsample_rate == 320  # measured from the module's timestamps (20 ms)
    wavs, lens = speech_batch([40000, 16000])
    with torch.no_grad():
        feats = frames(wavs, lens)
    model = toy_hear.load_model()
    whole, _ = toy_hear.get_timestamp_embeddings(wavs[:1], model)
    assert feats.lens.tolist() == [125, 50] and feats.hidden_states[0].shape == (2, 125, 8)
    # 2.5 s in 1 s chunks: 50 + 50 + 25 frames, each identical to the unchunked frames (hop divides the chunk)
    assert torch.allclose(feats.hidden_states[0][0], whole[0], atol=1e-5)
    assert max(shape[1] for shape in frames.hear_model.calls) == 16000  # never more than one chunk at a time
    scene = load("hear:toy_hear_module", chunk_seconds=1.0)
    with torch.no_grad():
        pooled = scene(wavs[:1], lens[:1]).hidden_states[0][0, 0]
    assert torch.allclose(pooled, whole[0].mean(dim=0), atol=1e-5)  # length-weighted chunk means = the mean


def test_hear_module_at_another_rate_gets_resampled_audio(toy_hear):
    upstream = load("hear:toy_hear_module", sample_rate=48000)
    with torch.no_grad():
        upstream(*speech_batch([8000]))
    assert upstream.hear_model.calls == [(1, 24000)]


def test_maebench_hear_module_through_the_hear_upstream():
    import maebench.hear as hear

    torch.manual_seed(0)
    upstream = load("hear:maebench.hear:mae_ast_frame:tiny", depth=2)
    reference = hear.HearModel(upstream.hear_model.upstream)
    wavs, lens = speech_batch([16000, 16000])
    with torch.no_grad():
        ours = upstream(wavs, lens).hidden_states[0][:, 0]
    assert torch.allclose(ours, hear.get_scene_embeddings(wavs, reference), atol=1e-6)


def test_hear_errors_are_one_line(toy_hear):
    with pytest.raises(MaebenchError) as err:
        load("hear:no_such_hear_module_xyz")
    one_line_error(err, "no_such_hear_module_xyz", "not installed")
    with pytest.raises(MaebenchError) as err:
        load("hear:not_hear")
    one_line_error(err, "not a HEAR module", "get_scene_embeddings")
    with pytest.raises(MaebenchError) as err:
        load("hear:toy_hear_module", embedding="frames")
    one_line_error(err, "embedding='frames'")


# --------------------------------------------------------------------------------------------------------- s3prl
@pytest.fixture(scope="module")
def s3prl_available():
    pytest.importorskip("s3prl", reason="install the s3prl extra: pip install 'maebench[s3prl]'")
    with torchaudio_restored():  # loading an s3prl upstream installs the torchaudio shim: undo it afterwards
        yield


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_s3prl_mae_ast_local_equals_the_native_loader(s3prl_available, tmp_path, tokenizer):
    """An official-format MAE-AST file through s3prl's own `mae_ast_local` gives maebench's features. Lengths
    follow s3prl ((len - 1) // rate + 1 frames, the tail repeating the last whole token), so the compared frames
    are the whole tokens maebench reports."""
    path = tmp_path / "mae_ast.pt"
    torch.save(mae_ast_checkpoint(tokenizer, dim=64, heads=4, ffn=128, enc=3, dec=2, seed=11), path)
    native, foreign = load(path), load(f"s3prl:mae_ast_local:{path}")
    assert (foreign.family, foreign.num_layers, foreign.hidden_size, foreign.downsample_rate) == (
        "s3prl", native.num_layers, native.hidden_size, native.downsample_rate)
    assert not foreign.training and not foreign.model.training
    wavs, lens = speech_batch([32000, 32000])
    with torch.no_grad():
        ours, theirs = native(wavs, lens), foreign(wavs, lens)
    assert theirs.lens.tolist() == foreign.output_lens(lens).tolist()
    for mine, ref in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        for b, valid in enumerate(ours.lens.tolist()):
            assert max_relative(ref[b, :valid], mine[b, :valid]) < 1e-4
    assert fingerprint(foreign) == fingerprint(load(f"s3prl:mae_ast_local:{path}"))


def test_s3prl_errors_are_one_line(s3prl_available, tmp_path):
    with pytest.raises(MaebenchError) as err:
        load("s3prl:no_such_upstream_xyz")
    one_line_error(err, "no upstream named 'no_such_upstream_xyz'")
    with pytest.raises(MaebenchError) as err:
        load(f"s3prl:mae_ast_local:{tmp_path / 'missing.pt'}")
    one_line_error(err, "missing.pt", "not found")
    with pytest.raises(MaebenchError) as err:
        load("s3prl:")
    one_line_error(err, "no s3prl upstream name")


def test_foreign_upstreams_through_eval_and_the_feature_cache(s3prl_available, toy_hear, tmp_path, monkeypatch):
    """Both kinds run the logreg probe end to end; results.json names them; a second run reads the cache."""
    from maebench.downstream.datasets import build_toy
    from maebench.downstream.evaluate import evaluate

    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    data = build_toy("ks2", tmp_path / "ks2", speech_backend="procedural")
    ckpt = tmp_path / "mae_ast.pt"
    torch.save(mae_ast_checkpoint("frame", dim=32, heads=2, ffn=64, enc=2, dec=1, seed=5), ckpt)
    for spec, family, layers in ((f"s3prl:mae_ast_local:{ckpt}", "s3prl", 2), ("hear:toy_hear_module", "hear", 1)):
        first = evaluate("ks2", spec, data_root=data, probe="logreg", out_dir=tmp_path / "runs", quiet=True,
                         overrides={"Cs": "[1.0]", "max_iter": "100"})
        again = evaluate("ks2", spec, data_root=data, probe="logreg", out_dir=tmp_path / "runs", quiet=True,
                         overrides={"Cs": "[1.0]", "max_iter": "100"})
        record = json.loads(Path(first["results_path"]).read_text())
        assert record["upstream"]["name"] == spec and record["upstream"]["family"] == family
        assert len(record["layers"]["scores"]) == layers and 0 <= record["score"] <= 100
        assert first["timings"]["extract_s"] > 0 and again["timings"]["extract_s"] == 0
        assert again["score"] == first["score"]
