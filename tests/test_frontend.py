"""The models' front end (maebench.upstream.frontend): the batched filterbank, checked against torchaudio's Kaldi
fbank, and the frame arithmetic."""

import math

import pytest
import torch
from helpers import padded_batch
from torch import Tensor
from torchaudio.compliance import kaldi

import maebench.upstream.frontend as frontend
from maebench.errors import MaebenchError
from maebench.upstream.frontend import (
    MAE_AST_FBANK,
    SAMPLE_RATE,
    SSAST_FBANK,
    FbankConfig,
    fbank_batch,
    frames_to_samples,
    num_frames,
)

CONFIGS = pytest.mark.parametrize("cfg", [MAE_AST_FBANK, SSAST_FBANK], ids=["mae_ast", "ssast"])


def voiced(num_samples: int, f0: float = 130.0, seed: int = 0, silence: tuple[int, int] | None = None) -> Tensor:
    """A vowel-like signal: 15 harmonics with a pitch glide, a slow loudness swell, noise and exact silence."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / 16000
    phase = 2 * math.pi * torch.cumsum(f0 * (1 + 0.2 * t), dim=0) / 16000
    wav = sum(torch.sin(k * phase + k) * 0.8**k for k in range(1, 16))
    noise = torch.randn(num_samples, generator=gen, dtype=torch.float64)
    wav = 0.2 * wav * (0.3 + torch.sin(math.pi * 2.5 * t) ** 2) + 0.002 * noise
    if silence is not None:
        wav[silence[0]:silence[1]] = 0.0
    return wav.float()


def reference(wav: Tensor, cfg: FbankConfig) -> Tensor:
    """torchaudio's per-utterance Kaldi fbank with the recipe's own preprocessing (SSAST removes the mean)."""
    if cfg.remove_mean:
        wav = wav - wav.mean()
    return kaldi.fbank(wav[None], **cfg.kaldi_kwargs())


def assert_matches_reference(waves: list[Tensor], feats: Tensor, frame_lens: Tensor, cfg: FbankConfig) -> None:
    assert feats.dtype == torch.float32
    assert feats.shape == (len(waves), num_frames(max(len(w) for w in waves), cfg), cfg.num_mel_bins)
    for b, wav in enumerate(waves):
        count = int(frame_lens[b])
        assert count == num_frames(len(wav), cfg)
        if count:
            ref = reference(wav, cfg)
            assert ref.shape[0] == count
            diff = (feats[b, :count].double() - ref.double()).abs().max().item()
            assert diff < 1e-3, f"item {b} ({len(wav)} samples) differs from torchaudio by {diff}"
        assert torch.count_nonzero(feats[b, count:]) == 0, f"item {b} has non-zero frames past its length"


def test_num_frames_int_and_tensor():
    cases = {0: 0, 1: 0, 399: 0, 400: 1, 401: 1, 559: 1, 560: 2, 16000: 98, 160000: 998}
    for n, expected in cases.items():
        assert num_frames(n) == expected
        assert num_frames(n, SSAST_FBANK) == expected
    tensor = num_frames(torch.tensor(list(cases)))
    assert tensor.dtype == torch.long
    assert tensor.tolist() == list(cases.values())


def test_frames_to_samples_inverts_num_frames():
    assert SAMPLE_RATE == 16000 == MAE_AST_FBANK.sample_rate == SSAST_FBANK.sample_rate
    assert [frames_to_samples(n) for n in (0, 1, 2, 16)] == [0, 400, 560, 2800]
    for cfg in (MAE_AST_FBANK, SSAST_FBANK, FbankConfig(frame_length_ms=20.0, frame_shift_ms=12.5)):
        for n in range(1, 40):
            samples = frames_to_samples(n, cfg)
            assert num_frames(samples, cfg) == n and num_frames(samples - 1, cfg) == n - 1
    with pytest.raises(ValueError):
        frames_to_samples(-1)


def test_configs_describe_the_two_recipes():
    assert (MAE_AST_FBANK.window_type, MAE_AST_FBANK.htk_compat, MAE_AST_FBANK.remove_mean) == ("povey", False, False)
    assert (SSAST_FBANK.window_type, SSAST_FBANK.htk_compat, SSAST_FBANK.remove_mean) == ("hanning", True, True)
    assert MAE_AST_FBANK.num_mel_bins == 128 and MAE_AST_FBANK.fft_size == 512
    assert (MAE_AST_FBANK.window_size, MAE_AST_FBANK.window_shift) == (400, 160)
    assert MAE_AST_FBANK.kaldi_kwargs()["dither"] == 0.0 and not MAE_AST_FBANK.kaldi_kwargs()["use_energy"]
    with pytest.raises(MaebenchError, match="window_type"):
        FbankConfig(window_type="kaiser")
    with pytest.raises(MaebenchError, match="high_freq=9000"):
        FbankConfig(high_freq=9000.0)
    with pytest.raises(MaebenchError, match="FFT size"):
        FbankConfig(frame_length_ms=25.0625, round_to_power_of_two=False)


@CONFIGS
def test_unequal_lengths_match_torchaudio(cfg):
    # a full second with a silent stretch, one sample over a frame, not a multiple of the shift, too short, silence
    lengths = [16000, 401, 9379, 399, 560, 1200]
    waves = [voiced(n, f0=110 + 17 * i, seed=i, silence=(4000, 7000) if n == 16000 else None)
             for i, n in enumerate(lengths)]
    waves[-1] = torch.zeros(1200)
    batch, lens = padded_batch(waves)
    feats, frame_lens = fbank_batch(batch, lens, cfg)
    assert frame_lens.tolist() == [num_frames(n) for n in lengths]
    assert_matches_reference(waves, feats, frame_lens, cfg)
    silent = feats[5, : frame_lens[5]]
    assert torch.allclose(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))


@CONFIGS
def test_padding_content_is_ignored(cfg):
    """Valid frames depend on valid samples only, and SSAST's mean is over the valid samples."""
    waves = [voiced(3000, seed=1) + 0.3, voiced(2100, seed=2)]
    clean, lens = padded_batch(waves)
    dirty, _ = padded_batch(waves, fill=5.0)
    feats_clean, _ = fbank_batch(clean, lens, cfg)
    feats_dirty, frame_lens = fbank_batch(dirty, lens, cfg)
    assert torch.allclose(feats_clean, feats_dirty, atol=1e-4)
    assert_matches_reference(waves, feats_dirty, frame_lens, cfg)


@CONFIGS
def test_uninitialised_memory_never_leaks_into_features(cfg, monkeypatch):
    """Fresh buffers may hold NaN/inf garbage: a value that meets a zero window weight must still be finite."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(frontend.torch, "empty", poisoned_empty)
    waves = [voiced(4000, seed=6), voiced(2500, seed=7)]
    batch, lens = padded_batch(waves)
    feats, frame_lens = fbank_batch(batch, lens, cfg)
    assert torch.isfinite(feats).all()
    assert_matches_reference(waves, feats, frame_lens, cfg)


@CONFIGS
def test_time_steps_on_cpu_join_seamlessly(cfg, monkeypatch):
    """The CPU path works through time in steps; a step boundary must not change any frame."""
    waves = [voiced(8000, seed=3), voiced(6543, seed=4), voiced(7000, seed=5)]
    batch, lens = padded_batch(waves)
    whole, _ = fbank_batch(batch, lens, cfg)
    monkeypatch.setattr(frontend, "_CPU_STEP_FRAMES", 20)  # 6 frames per step for 3 items
    stepped, frame_lens = fbank_batch(batch, lens, cfg)
    assert torch.equal(whole, stepped)
    assert_matches_reference(waves, stepped, frame_lens, cfg)


@CONFIGS
def test_float64_input_matches_float64_reference(cfg):
    waves = [voiced(4000, seed=6).double(), voiced(2345, seed=7).double()]
    batch, lens = padded_batch(waves)
    feats, frame_lens = fbank_batch(batch, lens, cfg)
    assert batch.dtype == torch.float64 and feats.dtype == torch.float32
    assert_matches_reference(waves, feats, frame_lens, cfg)


@pytest.mark.parametrize(
    "cfg",
    [
        FbankConfig(window_type="hamming", num_mel_bins=40),  # window[0] != 0: the first-sample rule matters
        FbankConfig(window_type="rectangular", preemphasis=0.0, remove_dc_offset=False, num_mel_bins=23,
                    low_freq=0.0, high_freq=7000.0),
        FbankConfig(window_type="hanning", remove_mean=True, remove_dc_offset=False),
        FbankConfig(sample_rate=8000, num_mel_bins=40, frame_shift_ms=12.5, high_freq=-200.0),
    ],
    ids=["hamming", "rectangular_plain", "mean_without_dc", "8k_shift_12.5ms"],
)
def test_other_kaldi_settings_match_torchaudio(cfg):
    waves = [voiced(5000, seed=13) + 0.1, voiced(3001, seed=14)]
    batch, lens = padded_batch(waves)
    feats, frame_lens = fbank_batch(batch, lens, cfg)
    assert_matches_reference(waves, feats, frame_lens, cfg)


def test_per_backend_precision_api_is_respected_and_restored():
    """torch >= 2.9's per-backend precision flags make the legacy getter raise; the filterbank must cope."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch without the per-backend precision API")
    wav = voiced(4000, seed=15)
    previous = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        feats, _ = fbank_batch(wav[None], torch.tensor([4000]))
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = previous
    torch.get_float32_matmul_precision()  # the process is left in a consistent state
    assert (feats[0] - reference(wav, MAE_AST_FBANK)).abs().max() < 1e-3


def test_dc_offset_does_not_cost_precision():
    """A tone on a large DC offset: the offset must not swamp the weak high bands with float32 rounding noise."""
    t = torch.arange(8000, dtype=torch.float64) / 16000
    wav = (0.5 + 0.1 * torch.sin(2 * math.pi * 440 * t)).float()
    feats, frame_lens = fbank_batch(wav[None], torch.tensor([8000]))
    exact = kaldi.fbank(wav.double()[None], **MAE_AST_FBANK.kaldi_kwargs())  # float64 all through
    assert (feats[0].double() - exact).abs().max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@CONFIGS
def test_cuda_matches_torchaudio_under_tf32_and_autocast(cfg):
    waves = [voiced(16000, seed=16, silence=(2000, 5000)), voiced(9379, seed=17), voiced(401, seed=18)]
    batch, lens = padded_batch(waves)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # what the trainer sets
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            feats, frame_lens = fbank_batch(batch.cuda(), lens.cuda(), cfg)
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert feats.device.type == "cuda" and frame_lens.device.type == "cuda"
    assert_matches_reference(waves, feats.cpu(), frame_lens.cpu(), cfg)


def test_batch_shorter_than_one_frame():
    feats, frame_lens = fbank_batch(torch.randn(3, 399), torch.tensor([399, 10, 0]))
    assert feats.shape == (3, 0, 128) and frame_lens.tolist() == [0, 0, 0]


def test_reduced_precision_settings_are_not_inherited():
    """Training code allows TF32/bf16 matmuls and runs under autocast; the filterbank stays float32 and restores."""
    wav = voiced(4000, seed=8)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, _ = fbank_batch(wav[None], torch.tensor([4000]))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert feats.dtype == torch.float32
    assert (feats[0] - reference(wav, MAE_AST_FBANK)).abs().max() < 1e-3


def test_bad_shapes_raise():
    with pytest.raises(MaebenchError, match="wavs"):
        fbank_batch(torch.randn(1000), torch.tensor([1000]))
    with pytest.raises(MaebenchError, match="lens"):
        fbank_batch(torch.randn(2, 1000), torch.tensor([1000]))


def test_bench_fbank_command_runs(capsys):
    from maebench.cli import main

    assert main(["bench", "fbank", "--batch", "2", "--seconds", "0.5", "--repeats", "1", "--config", "ssast"]) == 0
    out = capsys.readouterr().out
    assert "fbank_batch" in out and "max abs difference" in out


def test_fbank_inside_torch_compile_runs_eagerly_and_matches():
    """Under torch.compile the filterbank is one graph break, not seven, and gives the eager result."""
    waves = [voiced(4000, seed=8), voiced(3100, seed=9)]
    batch, lens = padded_batch(waves)
    explained = torch._dynamo.explain(lambda w, n: fbank_batch(w, n, MAE_AST_FBANK)[0] * 2)(batch, lens)
    assert explained.graph_break_count <= 1
    compiled = torch.compile(lambda w, n: fbank_batch(w, n, MAE_AST_FBANK)[0], backend="eager")
    torch.testing.assert_close(compiled(batch, lens), fbank_batch(batch, lens, MAE_AST_FBANK)[0], rtol=0, atol=0)
    torch._dynamo.reset()


def test_default_min_input_samples_is_one_stride_plus_one_window():
    """Models without a front end of their own keep 0.1.0's rule: downsample_rate + one 400-sample window."""
    from maebench.upstream.interface import Upstream

    class Strided(Upstream):
        downsample_rate = 320

    assert Strided().min_input_samples() == 720 and Strided().sample_rate == SAMPLE_RATE
