"""s3prl integration, tested against the real s3prl 0.4.18 package (the `s3prl` extra):

- the torchaudio >= 2.9 shim and `maebench_local` registration;
- s3prl's own upstream checks on `S3PRLUpstream("maebench_local", ...)` + `Featurizer` (forward and backward on
  0.001-0.05 s waves and mixed 0.001-1 s batches, expected lengths), and the legacy runner end to end;
- the numerical contract: official-layout checkpoints loaded by `maebench.upstream.load` give the same
  hidden_states as s3prl's own `ssast_*` / `mae_ast_local` upstream code (SSAST needs timm==0.4.5, as s3prl does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
import torchaudio
from helpers import TORCHAUDIO_SHIM_NAMES, torchaudio_restored
from test_official import mae_ast_checkpoint, max_relative, ssast_state_dict
from torch.nn.utils.rnn import pad_sequence

from maebench.errors import MaebenchError
from maebench.upstream import load
from maebench.upstream.s3prl_expert import UPSTREAM_NAME, MaebenchExpert, maebench_local
from maebench.upstream.torchaudio_compat import install_torchaudio_shim

REPO = Path(__file__).resolve().parents[1]
_SHIM_NAMES = TORCHAUDIO_SHIM_NAMES


@pytest.fixture(scope="module")
def hub():
    """s3prl.hub with maebench_local registered; torchaudio is restored afterwards for the other test modules."""
    pytest.importorskip("s3prl", reason="install the s3prl extra: pip install 'maebench[s3prl]'")
    from maebench.upstream.s3prl_expert import register

    with torchaudio_restored():
        yield register()


# ---------------------------------------------------------------------------------------------------------------
# Shim
# ---------------------------------------------------------------------------------------------------------------


def test_shim_restores_what_s3prl_imports_and_is_idempotent(tmp_path, monkeypatch):
    for name in _SHIM_NAMES:
        if hasattr(torchaudio, name):
            monkeypatch.setattr(torchaudio, name, getattr(torchaudio, name))
    monkeypatch.delitem(sys.modules, "torchaudio.sox_effects", raising=False)
    added = install_torchaudio_shim()
    if torchaudio.__version__ >= "2.9":
        assert {"set_audio_backend", "sox_effects"} <= set(added)
    assert install_torchaudio_shim() == []  # second call: nothing left to add
    torchaudio.set_audio_backend("sox_io")  # the call s3prl makes at import time is now a no-op
    import torchaudio.sox_effects as sox_effects

    quieter, rate = sox_effects.apply_effects_tensor(torch.ones(1, 10), 16000, [["gain", "-6.0206"]])
    assert rate == 16000 and torch.allclose(quieter, torch.full((1, 10), 0.5), atol=1e-4)
    with pytest.raises(MaebenchError, match="'vad'.*not implemented"):
        sox_effects.apply_effects_tensor(torch.zeros(1, 10), 16000, [["vad"]])
    wav = (torch.arange(800) % 50 / 100.0).float()
    path = tmp_path / "tone.wav"
    soundfile.write(path, wav.numpy(), 16000, subtype="FLOAT")
    loaded, rate = torchaudio.load(str(path))
    assert rate == 16000 and loaded.shape == (1, 800) and torch.allclose(loaded[0], wav)
    info = torchaudio.info(str(path))
    assert (info.sample_rate, info.num_frames, info.num_channels) == (16000, 800, 1)


# ---------------------------------------------------------------------------------------------------------------
# The plugin under s3prl's own checks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, overrides", [
    ("mae_ast_patch:tiny", {"depth": 2}),
    ("ssast_frame:tiny", {"depth": 2}),
])
def test_s3prl_upstream_checks_pass(hub, preset, overrides):
    from s3prl.nn import Featurizer, S3PRLUpstream
    from s3prl.util.pseudo_data import get_pseudo_wavs

    assert getattr(hub, UPSTREAM_NAME) is maebench_local
    upstream = S3PRLUpstream(UPSTREAM_NAME, path_or_url=preset, extra_conf=overrides)
    featurizer = Featurizer(upstream)
    assert upstream.num_layers == 2
    rate = upstream.downsample_rates[0]
    # s3prl's test_upstream: extra-short single waves, pairs, mixed batches, forward + backward
    for pseudo in ({"min_secs": 0.001, "max_secs": 0.001, "n": 1}, {"min_secs": 0.001, "max_secs": 0.001, "n": 2},
                   {"min_secs": 0.001, "max_secs": 1, "n": 3}, {"min_secs": 0.05, "max_secs": 0.05, "n": 2}):
        upstream.zero_grad()
        wavs, wavs_len = get_pseudo_wavs(padded=True, **pseudo)
        all_hs, all_lens = upstream(wavs, wavs_len)
        hs, hs_len = featurizer(all_hs, all_lens)
        assert hs.shape[1] == max(hs_len) and all(h.shape == all_hs[0].shape for h in all_hs)
        assert torch.equal(hs_len, torch.div(wavs_len - 1, rate, rounding_mode="floor") + 1)
        hs.sum().backward()
        grads = [p.grad for p in upstream.parameters() if p.requires_grad]
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_legacy_featurizer_accepts_the_expert(hub):
    from s3prl.upstream.interfaces import Featurizer

    expert = maebench_local("mae_ast_frame:tiny", depth=2)
    featurizer = Featurizer(expert, upstream_device="cpu")
    wavs = [torch.randn(n) for n in (16000, 9000, 300)]
    with torch.no_grad():
        outputs = expert(wavs)
    assert len(outputs["hidden_states"]) == 2 and outputs["last_hidden_state"] is outputs["hidden_states"][-1]
    features = featurizer(wavs, outputs)  # asserts T within 5 frames of round(len / rate) itself
    assert [f.shape for f in features] == [(50, 192), (28, 192), (1, 192)]


def test_short_items_repeat_their_last_real_frame(hub):
    expert = MaebenchExpert(load("mae_ast_patch:tiny", depth=1).eval())
    wavs = [torch.randn(16000), torch.randn(16000)]
    with torch.no_grad():
        h = expert(wavs)["hidden_states"][0]
        direct = expert.upstream(torch.stack(wavs), torch.tensor([16000, 16000])).hidden_states[0]
    # 1 s = 98 fbank frames = 6 whole 16-frame tokens; s3prl expects ceil(16000 / 2560) = 7 frames
    assert h.shape[1] == 7 and direct.shape[1] == 6
    assert torch.equal(h[:, :6], direct) and torch.equal(h[:, 6], direct[:, 5])


def test_bad_options_file_is_a_one_line_error(tmp_path):
    from maebench.errors import MaebenchError

    broken = tmp_path / "upstream.yaml"
    broken.write_text("window_secs: [6.0\n")
    with pytest.raises(MaebenchError, match=r"upstream\.yaml: not valid YAML") as err:
        maebench_local("mae_ast_frame:tiny", model_config=str(broken))
    assert "\n" not in str(err.value)
    broken.write_text("- 6.0\n")
    with pytest.raises(MaebenchError, match="expected a mapping of load options"):
        maebench_local("mae_ast_frame:tiny", model_config=str(broken))


def test_runner_help_lists_the_registered_upstream(hub, capsys):
    from maebench.s3prl_runner import main

    with pytest.raises(SystemExit) as exit_info:  # argparse inside s3prl's run_downstream.py
        main(["-h"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--upstream_ckpt" in out and UPSTREAM_NAME in out


def test_runner_argument_defaults_and_errors(hub, tmp_path):
    from maebench.errors import MaebenchError
    from maebench.s3prl_runner import runner_arguments

    config = tmp_path / "c.yaml"
    config.write_text("runner: {}\n")
    args = runner_arguments(["-m", "train", "-d", "example", "-c", str(config), "-k", "mae_ast_frame:tiny"])
    assert args[args.index("-u") + 1] == UPSTREAM_NAME
    if not torch.cuda.is_available():
        assert args[args.index("--device") + 1] == "cpu"
    with pytest.raises(MaebenchError, match="does not ship downstream/speech_commands/config.yaml"):
        runner_arguments(["-m", "train", "-d", "speech_commands", "-k", "mae_ast_frame:tiny"])
    with pytest.raises(MaebenchError, match="-k PATH_OR_PRESET"):
        runner_arguments(["-m", "train", "-d", "example", "-c", str(config)])


EXAMPLE_CONFIG = """\
runner:
  total_steps: 2
  gradient_clipping: 1
  gradient_accumulate_steps: 1
  log_step: 1
  eval_step: 1000
  save_step: 2
  max_keep: 1
  eval_dataloaders: [dev]
optimizer:
  name: TorchOptim
  torch_optim_name: Adam
  lr: 1.0e-4
downstream_expert:
  datarc: {train_batch_size: 2, eval_batch_size: 2, num_workers: 0}
  modelrc: {input_dim: 16}
"""


@pytest.mark.slow
def test_legacy_runner_trains_with_a_maebench_upstream(hub, tmp_path):
    """`python -m maebench.s3prl` end to end: s3prl's runner builds maebench_local (options from -g), the
    Featurizer and the `example` downstream (random waves), trains 2 steps and saves its checkpoint."""
    config = tmp_path / "example.yaml"
    config.write_text(EXAMPLE_CONFIG)
    options = tmp_path / "upstream.yaml"
    options.write_text("depth: 2\n")
    expdir = tmp_path / "exp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-m", "maebench.s3prl", "-m", "train", "-d", "example", "-c", str(config),
         "-k", "mae_ast_frame:tiny", "-g", str(options), "-p", str(expdir), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    states = torch.load(expdir / "states-2.ckpt", map_location="cpu", weights_only=False)
    assert states["Step"] == 2 and states["Args"].upstream == UPSTREAM_NAME
    assert states["Featurizer"]["weights"].shape == (2,)  # the -g options reached load(): 2 layers


# ---------------------------------------------------------------------------------------------------------------
# Numerical contract against s3prl's own upstreams
# ---------------------------------------------------------------------------------------------------------------


def _compare(ours_model, s3prl_expert, lens: list[int], seed: int = 0) -> float:
    """Same count, same shapes, valid frames within 1e-4 relative; returns the largest relative difference."""
    g = torch.Generator().manual_seed(seed)
    wavs = [torch.randn(n, generator=g) * 0.1 for n in lens]
    with torch.no_grad():
        theirs = s3prl_expert(wavs)["hidden_states"]
        ours = ours_model(pad_sequence(wavs, batch_first=True), torch.tensor(lens))
    assert len(ours.hidden_states) == len(theirs)
    worst = 0.0
    for mine, ref in zip(ours.hidden_states, theirs, strict=True):
        assert mine.shape == ref.shape
        for b, valid in enumerate(ours.lens.tolist()):
            worst = max(worst, max_relative(mine[b, :valid], ref[b, :valid]))
    assert worst < 1e-4, worst
    return worst


@pytest.fixture(scope="module")
def ssast_expert(hub):
    timm = pytest.importorskip("timm", reason="s3prl's SSAST upstream needs timm==0.4.5")
    if timm.__version__ != "0.4.5":
        pytest.skip(f"s3prl's SSAST upstream asserts timm==0.4.5 (found {timm.__version__})")
    from s3prl.upstream.ssast.expert import UpstreamExpert

    def build(path: Path, tokenizer: str, window_secs: float = 1.0):
        # as s3prl's hubconf builds ssast_{patch,frame}_base, with the tiny DeiT for these small files
        return UpstreamExpert(str(path), f"tiny_{tokenizer[0]}", window_secs).eval()

    return build


def test_ssast_layout_is_exactly_the_official_state_dict(ssast_expert, tmp_path):
    """s3prl loads SSAST files with strict=False, so check our hand-built layout key-for-key against the model
    s3prl (and the SSAST repository) saves: DataParallel(ASTModel(pretrain_stage=True))."""
    from s3prl.upstream.ssast.ast_models import ASTModel

    for tokenizer, (fshape, tshape) in (("patch", (16, 16)), ("frame", (128, 2))):
        official = torch.nn.DataParallel(ASTModel(fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape,
                                                  input_tdim=1024, model_size="tiny", pretrain_stage=True))
        ours = ssast_state_dict(tokenizer, dim=192, depth=12, tdim=1024)
        assert {k: tuple(v.shape) for k, v in ours.items()} == {
            k: tuple(v.shape) for k, v in official.state_dict().items()}


@pytest.mark.parametrize("tokenizer, window_secs, lens", [
    ("patch", 6.0, [100000]),  # 6.25 s: two 6 s windows, the second mostly silence
    ("frame", 2.0, [40000, 30000]),
])
def test_ssast_features_equal_s3prl(ssast_expert, tmp_path, tokenizer, window_secs, lens):
    path = tmp_path / f"SSAST-Tiny-{tokenizer}-400.pth"
    torch.save(ssast_state_dict(tokenizer, dim=192, depth=12, tdim=1024, seed=7), path)
    ours, theirs = load(path), ssast_expert(path, tokenizer)
    _compare(ours, theirs, [24000, 17000, 5000], seed=1)  # default 1 s windows, unequal lengths
    ours_w, theirs_w = load(path, window_secs=window_secs), ssast_expert(path, tokenizer, window_secs=window_secs)
    _compare(ours_w, theirs_w, lens, seed=2)


@pytest.fixture(scope="module")
def mae_ast_expert(hub):
    def build(path: Path):
        return hub.mae_ast_local(str(path)).eval()  # s3prl's own MAE-AST upstream, as its hubconf builds it

    return build


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_mae_ast_features_equal_s3prl(mae_ast_expert, tmp_path, tokenizer):
    path = tmp_path / "mae_ast.pt"
    torch.save(mae_ast_checkpoint(tokenizer, dim=64, heads=4, ffn=128, enc=3, dec=2, seed=11), path)
    ours, theirs = load(path), mae_ast_expert(path)
    _compare(ours, theirs, [32000, 32000])
    # unequal lengths whose frame counts are whole tokens (144 frames = 9 x 16 = 72 x 2)
    _compare(ours, theirs, [32000, 400 + 160 * 143], seed=1)


def test_mae_ast_fp16_file_differs_from_s3prl_only_by_its_rounded_position_table(mae_ast_expert, tmp_path):
    """An fp16 fairseq file stores the sinusoidal table in fp16 too; s3prl adds that rounded table (error up to
    2.4e-4 per entry here), maebench recomputes it exactly. With s3prl given the exact table, outputs agree."""
    from test_official import sine_table

    path = tmp_path / "mae_ast_fp16.pt"
    torch.save(mae_ast_checkpoint("patch", dim=64, heads=4, ffn=128, enc=3, dec=2, seed=11, fp16=True), path)
    ours, theirs = load(path), mae_ast_expert(path)
    g = torch.Generator().manual_seed(0)
    wavs = [torch.randn(32000, generator=g) * 0.1 for _ in range(2)]
    with torch.no_grad():
        raw = theirs(wavs)["hidden_states"]
        mine = ours(torch.stack(wavs), torch.tensor([32000, 32000])).hidden_states
    assert max(max_relative(a, b) for a, b in zip(mine, raw, strict=True)) < 1e-3
    table = theirs.model.enc_sine_pos_embed.pe
    table.copy_(sine_table(table.shape[1], table.shape[2]))
    _compare(ours, theirs, [32000, 32000])


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_mae_ast_partial_tokens_match_s3prl_run_per_utterance(mae_ast_expert, tmp_path, tokenizer):
    """s3prl's batched MAE-AST counts a shorter item's last, partly padded token as valid (its padding mask rounds
    frames up to whole tokens), so its output depends on the batch; ours drops partial tokens, which is exactly
    what s3prl gives for each utterance alone."""
    path = tmp_path / "mae_ast.pt"
    torch.save(mae_ast_checkpoint(tokenizer, enc=2, dec=1, seed=13), path)
    ours, theirs = load(path), mae_ast_expert(path)
    lens = [32000, 400 + 160 * 146]  # 147 frames: 9 patch tokens + 3 frames, 73 frame tokens + 1 frame
    g = torch.Generator().manual_seed(3)
    wavs = [torch.randn(n, generator=g) * 0.1 for n in lens]
    with torch.no_grad():
        batched = ours(pad_sequence(wavs, batch_first=True), torch.tensor(lens))
        for b, wav in enumerate(wavs):
            alone = theirs([wav])["hidden_states"]
            valid = int(batched.lens[b])
            assert valid == alone[0].shape[1]
            for mine, ref in zip(batched.hidden_states, alone, strict=True):
                assert max_relative(mine[b, :valid], ref[0]) < 1e-4
