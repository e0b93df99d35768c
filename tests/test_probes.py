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
