"""The Upstream contract, run for every preset: what probes, the feature cache, s3prl and HEAR rely on.

forward(wavs[B, N], lens[B]) -> Features: one (B, T, hidden_size) tensor per layer, `lens` the valid frames
(= output_lens), padding never leaks into an item, a saved checkpoint reloads to the same features, and a clip of
min_input_samples() samples gives at least one frame.
"""

from __future__ import annotations

import pytest
import torch
from helpers import speech_batch, speechlike

from maebench.upstream import load, save_upstream
from maebench.upstream.frontend import SAMPLE_RATE
from maebench.upstream.registry import PRESETS

LENGTHS = [20_000, 7_300, 12_345]


@pytest.fixture(scope="module", params=sorted(PRESETS))
def upstream(request):
    torch.manual_seed(0)
    return load(f"{request.param}:tiny").eval()


def test_attributes_describe_the_output(upstream):
    wavs, lens = speech_batch(LENGTHS)
    with torch.no_grad():
        out = upstream(wavs, lens)
    assert upstream.sample_rate == SAMPLE_RATE
    assert len(out.hidden_states) == upstream.num_layers
    frames = out.hidden_states[0].shape[1]
    for h in out.hidden_states:
        assert h.shape == (len(LENGTHS), frames, upstream.hidden_size) and h.dtype == torch.float32
        assert torch.isfinite(h).all()
    assert out.lens.shape == (len(LENGTHS),) and torch.equal(out.lens.cpu(), upstream.output_lens(lens))
    assert int(out.lens.max()) == frames
    # downsample_rate is samples per output frame: the longest clip's frame count agrees within a window or two
    assert abs(frames - max(LENGTHS) / upstream.downsample_rate) <= 2


def test_padding_never_changes_an_item(upstream):
    wavs, lens = speech_batch(LENGTHS, fill=0.5)  # garbage in the padding must not leak in
    with torch.no_grad():
        together = upstream(wavs, lens)
        for i, n in enumerate(LENGTHS):
            alone = upstream(wavs[i : i + 1, :n], lens[i : i + 1])
            valid = int(alone.lens[0])
            assert valid == int(together.lens[i])
            for a, b in zip(alone.hidden_states, together.hidden_states, strict=True):
                torch.testing.assert_close(b[i, :valid], a[0, :valid], atol=5e-5, rtol=1e-4)


def test_eval_features_are_deterministic(upstream):
    wavs, lens = speech_batch(LENGTHS[:2])
    with torch.no_grad():
        first, second = upstream(wavs, lens), upstream(wavs, lens)
    for a, b in zip(first.hidden_states, second.hidden_states, strict=True):
        assert torch.equal(a, b)


def test_save_load_round_trip_gives_the_same_features(upstream, tmp_path):
    path = save_upstream(upstream, tmp_path / "ckpt")
    again = load(path).eval()
    assert type(again) is type(upstream) and again.to_config() == upstream.to_config()
    wavs, lens = speech_batch(LENGTHS[:2])
    with torch.no_grad():
        a, b = upstream(wavs, lens), again(wavs, lens)
    assert torch.equal(a.lens, b.lens)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)


def test_min_input_samples_gives_a_frame(upstream):
    shortest = upstream.min_input_samples()
    assert 0 < shortest <= SAMPLE_RATE
    wav = speechlike(shortest)[None]
    with torch.no_grad():
        out = upstream(wav, torch.tensor([shortest]))
    assert int(out.lens[0]) >= 1 and out.hidden_states[-1].shape[1] >= 1
    # and in a batch beside a longer clip
    wavs, lens = speech_batch([shortest, 9_000])
    with torch.no_grad():
        out = upstream(wavs, lens)
    assert int(out.lens[0]) >= 1
