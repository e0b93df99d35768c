"""Audio reading and resampling (maebench.audio): wav/flac/ogg to mono float32 at the models' sample rate."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional
from helpers import speechlike

import maebench.audio as audio
from maebench.audio import read_audio
from maebench.errors import MaebenchError


def test_read_wav_mono_exact(tmp_path):
    data = speechlike(8000, seed=9).numpy()
    path = tmp_path / "mono.wav"
    soundfile.write(path, data, 16000, subtype="FLOAT")
    wav = read_audio(path)
    assert wav.dtype == torch.float32 and wav.shape == (8000,)
    assert torch.equal(wav, torch.from_numpy(data))
    assert audio.read_audio_info(path) == (8000, 16000)


def test_read_flac_stereo_44k_mixes_and_resamples(tmp_path):
    left, right = speechlike(44100, seed=10).numpy(), speechlike(44100, seed=11).numpy() * 0.5
    path = tmp_path / "stereo.flac"
    soundfile.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    assert audio.read_audio_info(path) == (44100, 44100)
    stored, _ = soundfile.read(path, dtype="float64")  # what the 16-bit file really holds
    expected = torchaudio.functional.resample(torch.from_numpy(stored.mean(axis=1)), 44100, 16000)
    wav = read_audio(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.shape == expected.shape == (16000,)
    assert (wav.double() - expected).abs().max() < 1e-5
    at_44k = read_audio(path, sample_rate=44100)
    assert torch.allclose(at_44k.double(), torch.from_numpy(stored.mean(axis=1)), atol=1e-6)


def test_read_ogg_if_supported(tmp_path):
    if "OGG" not in soundfile.available_formats():
        pytest.skip("libsndfile built without ogg")
    path = tmp_path / "clip.ogg"
    soundfile.write(path, speechlike(16000, seed=12).numpy(), 16000, format="OGG", subtype="VORBIS")
    wav = read_audio(path)
    assert wav.shape == (16000,) and wav.abs().max() > 0.05


def test_resample_is_identity_at_same_rate():
    wav = torch.randn(1000)
    assert audio.resample(wav, 16000, 16000) is wav
    assert audio.resample(wav, 16000, 8000).shape == (500,)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty_file", "no_samples"])
def test_unreadable_audio_raises_maebench_error(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEthis is not audio" + bytes(range(200)))
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "no_samples":
        soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(MaebenchError, match=path.name) as err:
        read_audio(path)
    assert "\n" not in str(err.value)
    if kind != "no_samples":
        with pytest.raises(MaebenchError, match=path.name):
            audio.read_audio_info(path)
