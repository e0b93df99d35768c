"""Each probe learns a separable toy problem far above chance.

The stand-in upstream (log-magnitude spectra of 25 ms frames through small per-layer projections) and the hand-made
task (one sine frequency per class, with noise and varied lengths, written as real wav files) are also used by
tests/test_feature_cache.py and tests/test_eval_cli.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from maebench.downstream.augment import SpecAugment, mixup
from maebench.downstream.heads import AvgTokHead, token_width
from maebench.downstream.metrics import multi_hot
from maebench.downstream.probes import (
    SuperbFinetuneSettings,
    finetune_probe,
    linear_probe,
    logreg_probe,
    resolve_settings,
    settings_dict,
)
from maebench.downstream.tasks.base import Example, Fold, Task
from maebench.errors import MaebenchError
from maebench.upstream.interface import Features, Upstream

SAMPLE_RATE = 16000
FREQUENCIES = (300.0, 700.0, 1500.0, 3000.0)


class SpectrumUpstream(Upstream):
    """Frame spectra (400-sample windows, 160-sample hop) -> `num_layers` stacked tanh projections. Counts its
    forward calls so cache tests can tell whether it ran."""

    family = "test_spectrum"
    downsample_rate = 160

    def __init__(self, dim: int = 16, num_layers: int = 3, seed: int = 0):
        super().__init__()
        self.hidden_size, self.num_layers, self.dim = dim, num_layers, dim
        generator = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList()
        for index in range(num_layers):
            layer = nn.Linear(201 if index == 0 else dim, dim)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))
                layer.bias.zero_()
            self.layers.append(layer)
        self.forward_calls = 0

    def to_config(self) -> dict:
        return {"dim": self.dim, "num_layers": self.num_layers}

    def output_lens(self, lens: torch.Tensor) -> torch.Tensor:
        return (1 + torch.div(lens - 400, 160, rounding_mode="floor")).clamp(min=1)

    def forward(self, wavs: torch.Tensor, lens: torch.Tensor) -> Features:
        self.forward_calls += 1
        frames = wavs.unfold(1, 400, 160)  # (B, T, 400)
        x = torch.log1p(torch.fft.rfft(frames * torch.hann_window(400, device=wavs.device), dim=-1).abs())
        hidden = []
        for layer in self.layers:
            x = torch.tanh(layer(x))
            hidden.append(x)
        return Features(hidden_states=hidden, lens=self.output_lens(lens))


def _tone(frequencies, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wav = sum(np.sin(2 * np.pi * f * (1 + 0.02 * rng.standard_normal()) * t) for f in frequencies)
    return (0.3 * wav / len(frequencies) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def make_task(root: Path, *, multilabel: bool = False, per_class=(6, 3, 4), seed: int = 0,
              probe_defaults: dict | None = None) -> Task:
    """A 4-class task of wav files under `root` (train/dev/test counts per class from `per_class`)."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for split, count in zip(splits, per_class, strict=True):
        for label in range(len(FREQUENCIES)):
            for n in range(count):
                classes = (label, (label + 1 + n % 3) % 4) if multilabel else (label,)
                classes = tuple(sorted(set(classes)))
                path = root / split / f"c{label}_{n}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, _tone([FREQUENCIES[c] for c in classes], rng.uniform(0.25, 0.8), rng), SAMPLE_RATE)
                splits[split].append(Example(path=path, label=classes if multilabel else label,
                                             key=f"{split}/{path.name}"))
    defaults = probe_defaults or {
        "linear": {"lr": 1e-2, "batch_size": 8, "grad_accum": 1, "max_steps": 60, "eval_every": 20,
                   "grad_clip": 1.0, "projector_dim": 32, "loss": "ce"},
        "finetune": {"recipe": "ssast", "lr": 3e-3, "epochs": 6, "batch_size": 8, "grad_accum": 1,
                     "warmup_steps": 0, "lr_schedule": None, "mixup": 0.0, "freqm": 0, "timem": 0, "loss": "ce",
                     "weight_averaging": None, "betas": (0.95, 0.999), "weight_decay": 5e-7},
        "logreg": {"Cs": [0.1, 1.0], "max_iter": 200},
    }
    return Task(name="tones", root=root, metric="mAP" if multilabel else "accuracy",
                class_names=[f"{int(f)}hz" for f in FREQUENCIES], multilabel=multilabel,
                folds=[Fold("default", splits["train"], splits["dev"], splits["test"])], train_crop_seconds=None,
                max_eval_seconds=None, probe_defaults=defaults)


@pytest.fixture(scope="module")
def tone_task(tmp_path_factory) -> Task:
    return make_task(tmp_path_factory.mktemp("tones"))


def test_linear_probe_learns_tones(tone_task):
    result = linear_probe(SpectrumUpstream(), tone_task, tone_task.folds[0], seed=0)
    assert result.score >= 90.0  # chance is 25%
    assert result.dev_score is not None and result.dev_score >= 90.0
    weights = result.layers["weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert result.timings["extract_s"] > 0 and result.timings["train_s"] > 0


def test_linear_probe_multilabel_map(tmp_path):
    task = make_task(tmp_path, multilabel=True, per_class=(6, 2, 3))
    result = linear_probe(SpectrumUpstream(), task, task.folds[0], seed=0,
                          settings=resolve_settings("linear", task, {"max_steps": "100"}))
    # chance mAP = the positive rate (~45%); separable sines give far more
    targets = multi_hot([ex.label for ex in task.folds[0].test], 4)
    assert result.score >= 85.0 > 100 * targets.mean() + 20


def test_logreg_probe_learns_tones_and_reports_layers(tone_task, capsys):
    result = logreg_probe(SpectrumUpstream(), tone_task, tone_task.folds[0], seed=0, quiet=False)
    assert result.score >= 90.0
    assert len(result.layers["scores"]) == 3
    assert result.hparams["selected_layer"] in (0, 1, 2) and result.hparams["selected_C"] in (0.1, 1.0)
    assert "logreg per layer" in capsys.readouterr().err


def test_logreg_without_dev_uses_inner_folds(tmp_path):
    task = make_task(tmp_path, per_class=(6, 0, 3))
    result = logreg_probe(SpectrumUpstream(), task, task.folds[0], seed=0)
    assert result.hparams["selection"] == "inner 3-fold CV"
    assert result.score >= 90.0


def test_finetune_probe_learns_tones(tone_task):
    upstream = SpectrumUpstream()
    before = [p.detach().clone() for p in upstream.parameters()]
    result = finetune_probe(upstream, tone_task, tone_task.folds[0], seed=0)
    assert result.score >= 90.0
    assert result.hparams["head"] == "ft_avgtok"
    assert any(not torch.equal(a, b) for a, b in zip(before, upstream.parameters(), strict=True))  # trained
    assert upstream.fbank_augment is None  # the SpecAugment hook is removed afterwards


def test_finetune_superb_recipe_with_mixup_and_specaugment(tone_task):
    ssast = resolve_settings("finetune", tone_task, {"epochs": "6", "mixup": "0.3", "freqm": "8", "timem": "4"})
    shared = {k: v for k, v in settings_dict(ssast).items() if k in SuperbFinetuneSettings.__dataclass_fields__}
    settings = SuperbFinetuneSettings(**{**shared, "recipe": "superb", "betas": ssast.betas, "max_steps": 24,
                                         "eval_every": 6, "projector_dim": 32, "grad_clip": 1.0})
    seen = []

    class Spying(SpectrumUpstream):
        def forward(self, wavs, lens):
            seen.append(self.fbank_augment)
            return super().forward(wavs, lens)

    result = finetune_probe(Spying(), tone_task, tone_task.folds[0], seed=1, settings=settings)
    assert result.score >= 75.0
    assert result.hparams["head"] == "superb" and len(result.layers["weights"]) == 3
    assert any(isinstance(hook, SpecAugment) for hook in seen)


def test_specaugment_masks_bands_and_mixup_mixes_targets():
    fbank = torch.ones(64, 50, 128)
    out = SpecAugment(freqm=24, timem=10)(fbank)
    zero_bins = (out == 0).all(dim=1).sum(dim=1)  # masked frequency bins per item
    assert zero_bins.max() <= 23 and zero_bins.float().mean() > 5
    wavs, lens = torch.randn(8, 100), torch.full((8,), 100)
    targets = torch.eye(4)[torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])]
    mixed, _, mixed_targets = mixup(wavs, lens, targets, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed, wavs)


def test_unknown_setting_is_a_one_line_error(tone_task):
    with pytest.raises(MaebenchError, match=r"unknown linear setting 'stepz' \(tones linear has: lr, optimizer,"):
        resolve_settings("linear", tone_task, {"stepz": "3"})
    with pytest.raises(MaebenchError, match="lr='fast': expected a number"):
        resolve_settings("linear", tone_task, {"lr": "fast"})
    assert resolve_settings("linear", tone_task, {"linear.max_steps": "7"}).max_steps == 7


def test_balanced_sampling_draws_items_in_proportion_to_their_weights():
    """The linear probe's sampler follows the task's sample weights (s3prl's class-balanced KS1 sampler)."""
    from maebench.downstream.probes.training import epoch_batches

    weights = torch.tensor([0.0, 1.0, 3.0, 0.0], dtype=torch.double)
    batches = epoch_batches(4, 4, torch.Generator().manual_seed(0), weights)
    drawn = torch.cat([next(batches) for _ in range(2000)])
    counts = torch.bincount(drawn, minlength=4).double()
    assert counts[0] == 0 and counts[3] == 0
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.1)


def test_avgtok_head_averages_tokens_not_concatenated_frames():
    """SSAST's ft_avgtok: frames of k tokens (B, T, k * D) are pooled per token, so the head is LayerNorm(D)."""
    torch.manual_seed(0)
    k, dim, lens = 3, 4, torch.tensor([5, 2])
    hidden = torch.randn(2, 5, k * dim)
    head = AvgTokHead(k * dim, 6, token_dim=dim)
    assert head.norm.normalized_shape == (dim,) and head.classifier.in_features == dim
    # reference: mean over every valid token of each item, tokens laid out as (T * k, D)
    tokens = [hidden[b, : lens[b]].reshape(-1, dim).double().mean(dim=0) for b in range(2)]
    expected = head.classifier(head.norm(torch.stack(tokens).float()))
    torch.testing.assert_close(head.forward_frames([hidden], lens), expected)
    with pytest.raises(ValueError, match="not a multiple"):
        AvgTokHead(10, 6, token_dim=4)


def test_token_width_of_patch_and_frame_upstreams():
    from maebench.upstream import load

    patch, frame = load("mae_ast_patch:tiny"), load("ssast_frame:tiny")
    assert (patch.hidden_size, token_width(patch, patch.hidden_size)) == (8 * 192, 192)
    assert token_width(frame, frame.hidden_size) == frame.hidden_size == 192
    assert token_width(SpectrumUpstream(dim=16), 16) == 16


def test_finetune_rejects_sample_weights_that_do_not_match_the_training_set(tone_task):
    import dataclasses

    task = dataclasses.replace(tone_task, sample_weights=[1.0, 2.0])
    settings = dataclasses.replace(resolve_settings("finetune", task), balanced_sampling=True)
    with pytest.raises(MaebenchError, match="2 sample weights for 24 training items"):
        finetune_probe(SpectrumUpstream(), task, task.folds[0], settings=settings)


# ------------------------------------------------------------------ protocols per model family (issue 9)
def test_noise_roll_is_drawn_per_clip_and_mixup_keeps_each_length():
    """SSAST's dataloader draws the noise scale and the roll per item (np.random.rand() / 10, randint(-10, 10))."""
    from maebench.downstream.augment import NoiseRoll

    torch.manual_seed(0)
    ramp = torch.arange(40.0)[None, :, None].expand(16, 40, 3)
    out = NoiseRoll()(ramp)
    # the roll: out[t] ~ x[t - shift] + noise in [0, 0.1): each clip's shift read off its first frame
    shifts = {int(round(float((-out[b, 0, 0]) % 40))) % 40 for b in range(16)}
    assert len(shifts) > 3 and all(s <= 10 or s >= 30 for s in shifts)
    noise = out - ramp.roll(0, 1)
    assert noise.shape == ramp.shape
    wavs = torch.randn(6, 50)
    lens = torch.tensor([50, 10, 20, 30, 40, 50])
    targets = torch.eye(6)
    mixed, new_lens, _ = mixup(wavs * (torch.arange(50) < lens[:, None]), lens, targets, 1.0,
                               torch.Generator().manual_seed(1))
    assert torch.equal(new_lens, lens)  # the partner is cut to the item's own length, as the reference does
    assert all((mixed[b, lens[b]:] == 0).all() for b in range(6))


def test_superb_head_last_only_and_avgtok_whole_last_hidden_state():
    from maebench.downstream.heads import SuperbHead

    torch.manual_seed(0)
    hidden = [torch.randn(2, 5, 8) for _ in range(3)]
    lens = torch.tensor([5, 3])
    last = SuperbHead(3, 8, 4, 16, last_only=True)
    assert last.layer_logits.shape == (1,)
    features = Features(hidden_states=hidden, lens=lens)
    torch.testing.assert_close(last.forward_features(features), last.forward_frames(hidden[-1:], lens))
    head = AvgTokHead(8, 4, token_dim=4)
    whole = torch.randn(2, 7, 8)
    with_last = Features(hidden_states=hidden, lens=lens, last_hidden_state=whole)
    expected = head.classifier(head.norm(whole.reshape(2, 14, 4).mean(dim=1)))  # every token, padding included
    torch.testing.assert_close(head.forward_features(with_last), expected)


def test_settings_are_chosen_per_model_family(tmp_path):
    """KS1 / SID / ER: each family's own SUPERB recipe; AS / ESC-50 / KS2: SSAST's input for SSAST models."""
    from maebench.downstream.probes.settings import family_defaults, protocol_family
    from maebench.downstream.tasks.probe_settings import probe_defaults
    from maebench.upstream import load

    assert protocol_family(load("ssast_patch:tiny")) == "ssast_patch"
    assert protocol_family(load("mae_ast_frame:tiny")) == "mae_ast_frame"
    assert protocol_family(SpectrumUpstream()) == "test_spectrum"
    task = make_task(tmp_path, per_class=(1, 1, 1), probe_defaults=probe_defaults("ks1", False))
    ssast = resolve_settings("finetune", task, family="ssast_frame")
    assert (ssast.lr, ssast.batch_size, ssast.max_steps, ssast.target_length) == (5e-5, 32, 20_000, 100)
    assert (ssast.input_geometry, ssast.normalise_padding, ssast.fbank_mean) == ("global", False, -4.2677393)
    assert resolve_settings("finetune", task, family="ssast_patch").lr == 1e-4
    mae = resolve_settings("finetune", task, family="mae_ast_patch")
    assert (mae.lr, mae.batch_size, mae.layers, mae.feature_layout) == (1e-5, 512, "last", "tokens")
    assert family_defaults(task, "finetune", "test_spectrum")[1] == "default"
    sid = probe_defaults("sid", False)["by_family"]["ssast"]["finetune"]
    assert (sid["batch_size"], sid["grad_accum"], sid["max_steps"], sid["target_length"]) == (4, 8, 40_000, 1000)
    er = probe_defaults("er", False)
    assert er["by_family"]["ssast"]["finetune"]["target_length"] == 600 and er["finetune"]["layers"] == "last"
    assert probe_defaults("sid", False)["finetune"]["layers"] == "all"
    esc = probe_defaults("esc50", False)
    assert esc["by_family"]["ssast"]["finetune"]["input_geometry"] == "global"
    assert not esc["by_family"]["ssast"]["finetune"]["dev_holdout"] and not esc["finetune"]["dev_holdout"]
    assert not probe_defaults("as20k", False)["by_family"]["ssast"]["finetune"]["dev_holdout"]
    assert probe_defaults("ks2", False)["by_family"]["ssast"]["finetune"]["dev_holdout"]


def test_ssast_finetunes_on_its_global_input_without_a_dev_holdout(tone_task):
    """recipe "ssast" on an SSAST model: one global input, noise after normalisation, train + dev trained on."""
    from maebench.upstream.ssast import Ssast, SsastConfig

    model = Ssast(SsastConfig(tokenizer="frame", dim=32, num_heads=2, depth=1, target_frames=128))
    seen = []
    model.input_augment = None
    original = model._global_input

    def spy(wavs, lens, spec):
        seen.append((spec, model.input_augment))
        return original(wavs, lens, spec)

    model._global_input = spy
    settings = resolve_settings("finetune", tone_task, {"epochs": "1", "target_length": "80", "input_geometry":
                                                        "global", "fbank_mean": "-6.8", "fbank_std": "5.5",
                                                        "noise_augment": "true", "dev_holdout": "false"})
    result = finetune_probe(model, tone_task, tone_task.folds[0], settings=settings)
    assert seen and all(spec.target_frames == 80 for spec, _ in seen)
    assert any(hook is not None for _, hook in seen)  # the noise hook during training
    assert result.details["selection"] == "last step (no dev split)" and result.dev_score is None
    assert result.details["steps"] == math.ceil((24 + 12) / 8)  # 24 train + 12 dev clips, one epoch
    assert model.input_augment is None and model.global_input is not None


def test_mae_ast_finetunes_on_tokens_with_batchnorm_batch_statistics(tone_task):
    """MAE-AST fine-tuned as its authors' s3prl expert: token sequence, BatchNorm in train mode (batch statistics,
    running statistics updated), the last layer alone with layers="last"."""
    from maebench.upstream.mae_ast import MaeAst, MaeAstConfig

    def small(tokenizer: str) -> MaeAst:
        return MaeAst(MaeAstConfig(tokenizer=tokenizer, dim=32, num_heads=2, ffn_dim=64, depth=2, decoder_depth=0))

    model = small("frame")
    wavs = torch.randn(2, 8000) * 3
    lens = torch.tensor([8000, 6000])
    model.token_features = True
    features = model.eval()(wavs, lens)
    assert features.hidden_states[0].shape == (2, 24, 32) and features.lens.tolist() == [24, 18]
    before = model.batch_norm.running_mean.clone()
    train_out = model.train()(wavs, lens)
    assert not torch.equal(model.batch_norm.running_mean, before)  # batch statistics, running ones updated
    assert not torch.allclose(train_out.hidden_states[0], features.hidden_states[0])
    settings = SuperbFinetuneSettings(lr=1e-4, batch_size=8, max_steps=3, eval_every=3, projector_dim=16,
                                      layers="last", feature_layout="tokens")
    patch = small("patch")
    result = finetune_probe(patch, tone_task, tone_task.folds[0], settings=settings)
    assert patch.token_features and len(result.layers["weights"]) == 1


# ------------------------------------------------------------------------------------- SID: s3prl's 8 s crops
CROP = 128_000  # s3prl downstream/voxceleb1/config.yaml max_timestep (8 s at 16 kHz)


def _s3prl_crop(wav: torch.Tensor, max_timestep: int, start: int) -> torch.Tensor:
    """s3prl voxceleb1 dataset.py __getitem__'s crop, with its random.randint(0, length - max_timestep) given."""
    length = wav.shape[0]
    if length > max_timestep:
        assert 0 <= start <= length - max_timestep
        wav = wav[start:start + max_timestep]
    return wav


def _long_clips(root: Path, lengths: dict[str, list[int]], rate: int = SAMPLE_RATE) -> dict[str, list[Example]]:
    """Tone clips of the given lengths (samples at `rate`) per split, class = position modulo 4."""
    rng = np.random.default_rng(0)
    out: dict[str, list[Example]] = {}
    for split, sizes in lengths.items():
        out[split] = []
        for n, size in enumerate(sizes):
            label = n % len(FREQUENCIES)
            path = root / split / f"c{label}_{n}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _tone([FREQUENCIES[label]], size / rate, rng)[:size], rate)
            out[split].append(Example(path=path, label=label, key=f"{split}/{path.name}"))
    return out


def test_train_crops_are_seeded_windows_of_at_most_8_seconds(tmp_path):
    """One window of <= 8 s per longer clip, inside the clip, at a start s3prl could draw (0..length - 128000, both
    ends), the same for the same seed whatever the order, other windows for other seeds; shorter clips stay whole."""
    from maebench.downstream.probes.linear import train_crops
    from maebench.downstream.tasks.base import read_example
    from maebench.downstream.tasks.probe_settings import probe_defaults

    assert probe_defaults("sid", False)["linear"]["train_crop_seconds"] * SAMPLE_RATE == CROP
    assert probe_defaults("sid", True)["linear"]["train_crop_seconds"] * SAMPLE_RATE == CROP
    assert probe_defaults("ks1", False)["linear"]["train_crop_seconds"] == 0.0  # only SID crops
    clips = _long_clips(tmp_path, {"train": [3 * SAMPLE_RATE, CROP, CROP + 2, 12 * SAMPLE_RATE]})["train"]
    clips += _long_clips(tmp_path / "8k", {"train": [80_000]}, rate=8000)["train"]  # 10 s at 8 kHz
    crops = train_crops(clips, 8.0, seed=0)
    assert [c is e for c, e in zip(crops, clips, strict=True)] == [True, True, False, False, False]
    for crop, clip in zip(crops[2:], clips[2:], strict=True):
        assert crop.num_samples == CROP and crop.key == f"{clip.key}@{crop.offset}+{CROP}"
        whole = read_example(clip)
        window = read_example(crop)
        assert window.numel() == CROP and crop.offset + CROP <= whole.numel()
        assert torch.equal(window, _s3prl_crop(whole, CROP, crop.offset))
    assert train_crops(clips, 8.0, seed=0) == crops
    assert train_crops(clips[::-1], 8.0, seed=0)[::-1] == crops
    assert len({train_crops(clips, 8.0, seed=s)[3].offset for s in range(5)}) > 1
    starts = {train_crops(clips[2:3], 8.0, seed=s)[0].offset for s in range(60)}
    assert starts == {0, 1, 2}  # random.randint(0, 2): both ends
    with pytest.raises(MaebenchError, match="train_crop_seconds=-1.0: must be > 0"):
        train_crops(clips, -1.0, seed=0)


def test_linear_probe_trains_on_cached_crops_and_evaluates_whole_clips(tmp_path):
    """With train_crop_seconds the head's training rows are the pooled features of the seed's crops (their own
    cache entry, never the whole training clips), dev and test are whole clips, and results say what was cropped."""
    from maebench.downstream.batching import masked_mean
    from maebench.downstream.feature_cache import example_key, fold_features
    from maebench.downstream.probes.linear import probe_features, train_crops
    from maebench.downstream.probes.protocol import describe_protocol
    from maebench.downstream.tasks.base import read_example

    long, short, whole = 9 * SAMPLE_RATE, 5 * SAMPLE_RATE, 8 * SAMPLE_RATE + 8000
    clips = _long_clips(tmp_path, {"train": [long] * 4 + [short] * 4, "dev": [whole] * 4, "test": [whole] * 4})
    task = make_task(tmp_path / "unused", per_class=(0, 0, 0))
    task.folds = [Fold("default", clips["train"], clips["dev"], clips["test"])]
    settings = resolve_settings("linear", task, {"train_crop_seconds": "8", "max_steps": "40"})
    read_lengths: list[int] = []

    class Counting(SpectrumUpstream):
        def forward(self, wavs, lens):
            read_lengths.extend(lens.tolist())
            return super().forward(wavs, lens)

    upstream = Counting()
    result = linear_probe(upstream, task, task.folds[0], seed=0, settings=settings)
    assert result.details["train_crops"] == {"seconds": 8.0, "seed": 0, "cropped": 4, "clips": 8}
    assert sorted(read_lengths) == sorted([CROP] * 4 + [short] * 4 + [whole] * 8)  # no whole 9 s training clip
    assert result.score >= 75.0  # chance is 25%

    splits, _ = probe_features(upstream, task, task.folds[0], settings=settings, seed=0)
    crops = train_crops(clips["train"], 8.0, seed=0)
    assert splits["train"].keys == [example_key(c) for c in crops] and splits["train"].hit
    assert splits["dev"].keys == [c.key for c in clips["dev"]] and splits["test"].keys == [c.key for c in clips["test"]]
    with torch.no_grad():
        wav = read_example(crops[0])
        features = upstream(wav[None], torch.tensor([wav.numel()]))
        expected = torch.stack([masked_mean(h, features.lens) for h in features.hidden_states], dim=1)[0]
    np.testing.assert_allclose(splits["train"].features[0], expected.numpy(), atol=1e-5)
    full = fold_features(upstream, task, task.folds[0])["train"]
    assert len({full.directory, splits["train"].directory, splits["dev"].directory}) == 3
    other_seed, record = probe_features(upstream, task, task.folds[0], settings=settings, seed=1)
    assert other_seed["train"].directory != splits["train"].directory and record["seed"] == 1
    assert describe_protocol(upstream, task, "linear", settings, None, "default")["input"]["train_crop_seconds"] == 8
    logreg = resolve_settings("logreg", task)
    assert describe_protocol(upstream, task, "logreg", logreg, None, "default")["input"]["train_crop_seconds"] is None


# ------------------------------------------------------------------------------- issue 14: settings are checked
@pytest.mark.parametrize("probe, override, needle", [
    ("linear", "max_steps=0", "max_steps=0: must be positive"),
    ("linear", "grad_accum=0", "grad_accum=0: must be positive"),
    ("linear", "projector_dim=0", "projector_dim=0: must be positive"),
    ("linear", "batch_size=0", "batch_size=0: must be positive"),
    ("linear", "lr=inf", "expected a finite number"),
    ("linear", "lr=-1", "lr=-1.0: must be positive"),
    ("linear", "lr=nan", "expected a finite number"),
    ("linear", "optimizer=foo", "expected one of adam"),
    ("linear", "eval_every=-5", "eval_every=-5: must be 0 or more"),
    ("linear", "source=mine", "does not use this setting"),
    ("linear", "loss=ce", "multi-label and always trains with bce"),
    ("linear", "balanced_sampling=true", "has no sampling weights"),
    ("logreg", "Cs=0,1", "Cs=0.0,1.0: must be positive numbers"),
    ("logreg", "max_iter=0", "max_iter=0: must be positive"),
    ("logreg", "lr=0.1", "unknown logreg setting 'lr'"),
    ("finetune", "mixup=1.5", "mixup=1.5: must be a probability in [0, 1]"),
    ("finetune", "betas=0.9,1.2", "must be two numbers in [0, 1)"),
    ("finetune", "epochs=0", "epochs=0: must be positive"),
    ("finetune", "fbank_mean=-4", "applies only with input_geometry=global"),
    ("finetune", "weight_averaging=3,2", "1 <= first <= last"),
    ("finetune", "lr_schedule={start: 1, step: 0, decay: 0.5}", "lr_schedule="),
])
def test_every_probe_setting_is_checked_with_a_one_line_error(tmp_path, probe, override, needle):
    """Issue 14: zero budgets, infinite or negative rates and settings a probe ignores were accepted (and recorded
    in results.json as if applied) or crashed mid-run with a traceback."""
    from maebench.commands.eval import parse_overrides

    task = make_task(tmp_path, multilabel=True, per_class=(1, 1, 1))
    with pytest.raises(MaebenchError) as excinfo:
        resolve_settings(probe, task, parse_overrides([override]))
    message = str(excinfo.value)
    assert "\n" not in message and needle in message and message.startswith("--set")


def test_valid_settings_and_every_task_default_pass_the_checks(tmp_path):
    from maebench.downstream.probes.settings import check_settings
    from maebench.downstream.tasks import ALL_TASKS
    from maebench.downstream.tasks.probe_settings import probe_settings

    for name in ALL_TASKS:
        for toy in (False, True):
            for family in ("ssast_patch", "ssast_frame", "mae_ast_patch", "mae_ast_frame"):
                for settings in probe_settings(name, toy, family).values():
                    check_settings(settings)
    task = make_task(tmp_path, per_class=(1, 1, 1))
    settings = resolve_settings("linear", task, {"lr": "3e-4", "eval_every": "0", "grad_clip": "0", "loss": "bce"})
    assert (settings.lr, settings.eval_every, settings.loss) == (3e-4, 0, "bce")
    tuned = resolve_settings("finetune", task, {"epochs": "30", "weight_averaging": "5,30", "mixup": "1"})
    assert tuned.weight_averaging == (5, 30) and tuned.mixup == 1.0
    with pytest.raises(MaebenchError, match="weight_averaging starts at epoch 5, after the last one"):
        resolve_settings("finetune", task, {"epochs": "4", "weight_averaging": "5,30"})
