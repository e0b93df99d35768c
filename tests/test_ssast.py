"""SSAST: pretraining objectives, masking, and the s3prl-compatible feature path (tiny configs, short clips)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import speech_batch
from torch.utils.flop_counter import FlopCounterMode
from torchaudio.compliance import kaldi

from maebench.errors import MaebenchError
from maebench.upstream.frontend import frames_to_samples
from maebench.upstream.ssast import Ssast, SsastConfig, adapt_pos_embed, info_nce

SR = 16000


def tiny(tokenizer: str = "patch", **overrides) -> Ssast:
    fields = dict(tokenizer=tokenizer, dim=64, num_heads=2, depth=2, target_frames=128)
    fields.update(overrides)
    return Ssast(SsastConfig(**fields))




# ---------------------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_published_models():
    patch, frame = SsastConfig("patch"), SsastConfig("frame")
    assert patch.pretrain_grid == (8, 64) and frame.pretrain_grid == (1, 512)
    assert patch.num_masked == frame.num_masked == 400
    assert (patch.mask_type, frame.mask_type) == ("chunk", "random")
    assert patch.ffn_dim == 3072 and patch.depth == 12
    assert patch.feature_grid == (12, 9) and frame.feature_grid == (1, 99)
    # other grids keep 400/512 of the tokens masked: 128 frames of 16x16 patches = 64 tokens -> 50
    assert SsastConfig("patch", target_frames=128).num_masked == 50


def test_config_round_trip_and_errors():
    model = tiny("frame", pretrain_mode="one_pass", window_secs=0.5)
    config = model.to_config()
    rebuilt = Ssast.from_config(config)
    assert rebuilt.to_config() == config
    assert (rebuilt.hidden_size, rebuilt.num_layers, rebuilt.downsample_rate) == (64, 2, 160)
    patch = tiny("patch")
    assert (patch.hidden_size, patch.downsample_rate) == (12 * 64, 1600)
    with pytest.raises(MaebenchError, match="unknown field"):
        Ssast.from_config({**config, "bogus": 1})
    with pytest.raises(MaebenchError, match="tokenizer"):
        SsastConfig(tokenizer="pixel")
    with pytest.raises(MaebenchError, match="num_masked"):
        SsastConfig(target_frames=128, num_masked=65)
    with pytest.raises(MaebenchError, match="window_secs"):
        SsastConfig(window_secs=0.1)


def test_parameter_names_match_the_official_checkpoint():
    names = set(dict(tiny().named_parameters()))
    expected = {
        "cls_token", "dist_token", "pos_embed", "mask_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "norm.weight", "norm.bias", "cpredlayer.0.weight", "cpredlayer.2.bias", "gpredlayer.0.bias",
        "gpredlayer.2.weight", "blocks.1.norm1.weight", "blocks.1.attn.qkv.weight", "blocks.1.attn.proj.bias",
        "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.bias",
    }
    assert expected <= names
    assert tiny().pos_embed.shape == (1, 2 + 64, 64)


# ---------------------------------------------------------------------------------------------------- pretraining
@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
@pytest.mark.parametrize("mode", ["two_pass", "one_pass"])
def test_pretrain_loss_and_backward(tokenizer, mode):
    model = tiny(tokenizer, pretrain_mode=mode)
    wavs = speech_batch([16000] * 3)[0]
    lens = torch.tensor([16000, 11000, 6000])  # shorter than target_frames (padded) and longer (cut)
    out = model.pretrain_loss(wavs, lens)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.stats) == {"nce", "mse", "nce_acc"}
    assert torch.allclose(out.loss, out.stats["nce"] + 10 * out.stats["mse"])
    out.loss.backward()
    for name in ("mask_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "cpredlayer.2.weight",
                 "gpredlayer.2.weight", "norm.weight", "pos_embed"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_masks_have_exact_count_and_differ_per_clip(tokenizer):
    model = tiny(tokenizer)
    mask = model.sample_mask(6)
    assert mask.shape == (6, 64) and mask.dtype == torch.bool
    assert (mask.sum(1) == 50).all()
    assert len({tuple(row.tolist()) for row in mask}) == 6


def test_patchify_matches_unfold_order():
    """Targets are flattened exactly as the official code's nn.Unfold (and the Conv2d kernel) sees a patch."""
    model = tiny("patch")
    spec = torch.randn(2, 1, 128, 128)
    reference = torch.nn.Unfold(kernel_size=(16, 16), stride=(16, 16))(spec).transpose(1, 2)
    assert torch.equal(model.patchify(spec), reference)
    # and the Conv2d embedding of token i is the kernel applied to patch i
    tokens = model.patch_embed(spec)
    kernel = model.patch_embed.proj.weight.reshape(64, -1)
    assert torch.allclose(tokens, reference @ kernel.T + model.patch_embed.proj.bias, atol=1e-5)


def test_masked_patch_content_never_reaches_the_encoder():
    model = tiny("patch").eval()
    spec = torch.randn(1, 1, 128, 128)
    mask = model.sample_mask(1)
    masked_token = int(mask[0].nonzero()[0])
    visible_token = int((~mask[0]).nonzero()[0])

    def perturbed(token: int) -> torch.Tensor:
        row, col = divmod(token, 8)  # frequency-major tokens on the (8, 8) grid
        changed = spec.clone()
        changed[:, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] += 5.0
        return changed

    with torch.no_grad():
        base = model.encode(spec, mask)
        assert torch.equal(model.encode(perturbed(masked_token), mask), base)
        assert not torch.allclose(model.encode(perturbed(visible_token), mask), base)
        # without the mask the same change is visible: the invariance comes from the replacement
        assert not torch.allclose(model.encode(perturbed(masked_token)), model.encode(spec))


def test_info_nce_matches_cross_entropy_reference():
    pred, target = torch.randn(3, 7, 16, dtype=torch.float64), torch.randn(3, 7, 16, dtype=torch.float64)
    loss, acc = info_nce(pred, target, "paper")
    logits = torch.einsum("bmd,bnd->bmn", pred, target)
    labels = torch.arange(7).repeat(3)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.reshape(21, 7), labels).item(), rel=1e-5)
    code, _ = info_nce(pred, target)  # the default: each patch picks its prediction (ssast issue #13)
    transposed = logits.transpose(1, 2).reshape(21, 7)
    assert code.item() == pytest.approx(F.cross_entropy(transposed, labels).item(), rel=1e-5)
    logits = logits.reshape(21, 7)
    assert acc.item() == pytest.approx((logits.argmax(1) == labels).double().mean().item())


def test_info_nce_at_init_is_log_of_masked_count():
    model = tiny("frame", pretrain_mode="one_pass")
    with torch.no_grad():  # small logits: every masked patch looks equally likely
        model.cpredlayer[2].weight.mul_(1e-4)
        model.cpredlayer[2].bias.zero_()
    out = model.pretrain_loss(speech_batch([21000] * 2)[0], torch.tensor([21000, 21000]))
    assert out.stats["nce"].item() == pytest.approx(math.log(50), abs=1e-3)


@pytest.mark.parametrize(("mode", "passes"), [("one_pass", 1), ("two_pass", 2)])
def test_encoder_passes_per_step(mode, passes):
    model = tiny("patch", pretrain_mode=mode)
    embeds = []
    model.patch_embed.register_forward_hook(lambda module, inputs, output: embeds.append(1))
    calls = []
    model.norm.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    model.pretrain_loss(speech_batch([12000] * 2)[0], torch.tensor([12000, 9000]))
    assert len(calls) == passes and len(embeds) == passes


def test_pretrain_flops_matches_flop_counter():
    """pretrain_flops counts 3 x forward; torch's counter measures what autograd actually runs."""
    tokens, masked, values, dim, depth = 64, 50, 256, 64, 2
    for mode, passes in (("one_pass", 1), ("two_pass", 2)):
        model = tiny("frame", pretrain_mode=mode)
        counter = FlopCounterMode(display=False)
        with counter:
            model.spectrogram_loss(torch.randn(2, 1, 128, 128)).loss.backward()
        measured = counter.get_total_flops() / 2
        # what the counter does not see: CPU SDPA (scores and mixing, forward + backward), the input gradient
        # of the patch conv and of the InfoNCE targets (neither needs one)
        seq = 2 + tokens
        unseen = passes * depth * 3 * 4 * seq * seq * dim + passes * 2 * tokens * values * dim
        unseen += 2 * masked * masked * values
        assert model.pretrain_flops(21000) == pytest.approx(measured + unseen, rel=1e-6), mode

# ---------------------------------------------------------------------------------------------------- features
@pytest.mark.parametrize(
    ("tokenizer", "expected_lens", "dim"),
    [("patch", [3, 9, 25, 1], 12 * 64), ("frame", [30, 99, 250, 1], 64)],
)
def test_feature_shapes_and_lens(tokenizer, expected_lens, dim):
    model = tiny(tokenizer).eval()
    lens = torch.tensor([4800, 16000, 40000, 100])  # < 1 window, one window, 2.5 windows, < one fbank frame
    with torch.no_grad():
        features = model(speech_batch([40000] * 4)[0], lens)
    assert features.lens.tolist() == expected_lens
    assert model.output_lens(lens).tolist() == expected_lens
    assert len(features.hidden_states) == model.num_layers == 2
    for h in features.hidden_states:
        assert h.shape == (4, max(expected_lens), dim) and h.dtype == torch.float32


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_padded_batch_matches_single_items(tokenizer):
    model = tiny(tokenizer).eval()
    lens = torch.tensor([27000, 9000, 16000])
    wavs = speech_batch([27000] * 3, seed=1)[0]
    wavs[1, 9000:] = 0.7  # garbage in the padding must not leak into item 1
    with torch.no_grad():
        batched = model(wavs, lens)
        for b, n in enumerate(lens.tolist()):
            alone = model(wavs[b : b + 1, :n], torch.tensor([n]))
            valid = int(batched.lens[b])
            assert valid == int(alone.lens[0]) == alone.hidden_states[0].shape[1]
            for hb, ha in zip(batched.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(hb[b, :valid], ha[0], atol=2e-5, rtol=1e-4)


def _s3prl_style_reference(model: Ssast, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
    """s3prl 0.4.18's ssast expert + ast_models forward, re-traced step by step: per-window torchaudio fbank,
    per-window normalisation and zero padding, segment-major stacking, per-layer regrouping and trimming."""
    cfg = model.config
    window = int(cfg.window_secs * SR)
    target_length = int(cfg.window_secs * SR / 160)
    max_len = max(len(w) for w in wavs)
    starts = list(range(0, max_len, window))
    padded = [torch.cat([w, w.new_zeros(starts[-1] + window - len(w))]) for w in wavs]
    segments = []
    for start in starts:
        feats = []
        for w in padded:
            y = kaldi.fbank(w[start : start + window].unsqueeze(0), htk_compat=True, sample_frequency=SR,
                            use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
            y = (y + 4.2677393) / (4.5689974 * 2)
            y = F.pad(y, (0, 0, 0, target_length - y.shape[0]))
            feats.append(y)
        segments.append(torch.stack(feats))
    x = torch.stack(segments).reshape(-1, target_length, 128)  # (segments * batch, T, 128)
    x = x.unsqueeze(1).transpose(2, 3)
    x = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=(cfg.fstride, cfg.tstride))
    x = x.flatten(2).transpose(1, 2)
    n = x.shape[0]
    x = torch.cat([model.cls_token.expand(n, -1, -1), model.dist_token.expand(n, -1, -1), x], dim=1)
    x = x + model.feature_pos_embed()
    vertical = (128 - cfg.fshape) // cfg.fstride + 1
    outputs = []
    for block in model.blocks:
        x = block(x)
        h = x[:, 2:].reshape(n, vertical, -1, x.shape[-1]).transpose(1, 2).flatten(2)
        h = h.reshape(len(starts), len(wavs), -1, h.shape[-1]).transpose(0, 1).flatten(1, 2)
        outputs.append(h[:, : len(range(0, max_len, model.downsample_rate))])
    return outputs


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_features_match_s3prl_procedure(tokenizer):
    model = tiny(tokenizer).eval()
    lengths = [30000, 17000, 5000]
    audio = speech_batch([30000] * 3, seed=2)[0]
    wavs = [audio[b, :n] for b, n in enumerate(lengths)]
    with torch.no_grad():
        ours = model(audio, torch.tensor(lengths))
        reference = _s3prl_style_reference(model, wavs)
    assert len(ours.hidden_states) == len(reference)
    for h, r in zip(ours.hidden_states, reference, strict=True):
        assert h.shape == r.shape
        torch.testing.assert_close(h, r, atol=2e-4, rtol=1e-4)


def _linear_resize_1d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Half-pixel linear resize along the last axis in float64 (bilinear, align_corners=False), by hand."""
    n = x.shape[-1]
    out = torch.empty(*x.shape[:-1], size, dtype=torch.float64)
    for i in range(size):
        src = max((i + 0.5) * n / size - 0.5, 0.0)
        lo = min(int(math.floor(src)), n - 1)
        hi = min(lo + 1, n - 1)
        frac = src - lo
        out[..., i] = (1 - frac) * x[..., lo] + frac * x[..., hi]
    return out


def test_pos_embed_patch_crop_matches_float64_hand_computation():
    """Patch model at 1 s windows: 64 time columns cropped to the centre 9 (28..36), 8 rows resized to 12."""
    dim = 5
    pos = torch.randn(1, 2 + 8 * 64, dim, dtype=torch.float64)
    adapted = adapt_pos_embed(pos, (8, 64), (12, 9))
    assert adapted.shape == (1, 2 + 12 * 9, dim)
    # float32 (the model's dtype) agrees to rounding
    torch.testing.assert_close(adapt_pos_embed(pos.float(), (8, 64), (12, 9)).double(), adapted, atol=1e-5, rtol=0)
    grid = pos[0, 2:].T.reshape(dim, 8, 64)
    expected = grid[:, :, 28:37]
    expected = _linear_resize_1d(expected.transpose(1, 2), 12).transpose(1, 2)  # (dim, 12, 9)
    assert torch.equal(adapted[0, :2], pos[0, :2])
    torch.testing.assert_close(adapted[0, 2:], expected.reshape(dim, -1).T, atol=1e-12, rtol=0)


def test_pos_embed_frame_crop_and_time_resize():
    dim = 3
    pos = torch.randn(1, 2 + 512, dim, dtype=torch.float64)
    cropped = adapt_pos_embed(pos, (1, 512), (1, 99))  # frame model, 1 s: columns 207..305, exactly
    assert torch.equal(cropped[0, 2:], pos[0, 2 + 207 : 2 + 306])
    longer = adapt_pos_embed(pos, (1, 512), (1, 999))  # frame model, 10 s windows: linear resize in time
    expected = _linear_resize_1d(pos[0, 2:].T, 999).T
    torch.testing.assert_close(longer[0, 2:], expected, atol=1e-12, rtol=0)


def test_fbank_augment_applies_only_in_training():
    model = tiny("frame")
    calls = []

    def augment(fbank: torch.Tensor) -> torch.Tensor:
        calls.append(fbank.shape)
        return fbank * 0

    model.fbank_augment = augment
    wavs, lens = speech_batch([8000] * 1)[0], torch.tensor([8000])
    model.eval()
    with torch.no_grad():
        eval_out = model(wavs, lens).hidden_states[-1]
    assert calls == []
    model.train()
    with torch.no_grad():
        train_out = model(wavs, lens).hidden_states[-1]
    assert calls == [(1, 98, 128)]
    assert not torch.allclose(eval_out, train_out)


def test_fbank_augment_sees_the_whole_clip_not_each_window():
    """SpecAugment's time masks (48-192 frames in the recipes) must be drawn over the clip, once per item."""
    model = tiny("frame")
    shapes = []
    model.fbank_augment = lambda fbank: shapes.append(fbank.shape) or fbank
    model.train()
    with torch.no_grad():
        model(speech_batch([40000] * 2)[0], torch.tensor([40000, 30000]))  # 2.5 s: three 1 s windows per item
    assert shapes == [(2, 3 * 98, 128)]


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_min_input_samples_is_one_patch_column(tokenizer):
    model = tiny(tokenizer).eval()
    shortest = model.min_input_samples()
    assert shortest == {"patch": 2800, "frame": 560}[tokenizer] == frames_to_samples(model.config.tshape)
    # 0.1.0 padded short clips to downsample_rate + 400 samples (2000 / 560): the same frames and features
    wav = speech_batch([1000] * 1)[0]
    old = model.downsample_rate + 400
    with torch.no_grad():
        a = model(F.pad(wav, (0, shortest - 1000)), torch.tensor([shortest]))
        b = model(F.pad(wav, (0, old - 1000)), torch.tensor([old]))
    assert a.lens.tolist() == b.lens.tolist()
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)


# ------------------------------------------------------------------ SSAST's own fine-tuning input (issue 9 item 4)
ESC50_MEAN, ESC50_STD = -6.6268077, 5.358466


def _reference_pos_embed(pos: torch.Tensor, p_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """ssast src/models/ast_models.py lines 192-204, step for step (its hard-coded 8 rows and `+ t_dim` included)."""
    (p_f, p_t), (f_dim, t_dim) = p_grid, grid
    dim = pos.shape[-1]
    new = pos[:, 2:].reshape(1, p_f * p_t, dim).transpose(1, 2).reshape(1, dim, p_f, p_t)
    if t_dim < p_t:
        new = new[:, :, :, int(p_t / 2) - int(t_dim / 2): int(p_t / 2) - int(t_dim / 2) + t_dim]
    else:
        new = F.interpolate(new, size=(8, t_dim), mode="bilinear")
    if f_dim < p_f:
        new = new[:, :, int(p_f / 2) - int(f_dim / 2): int(p_f / 2) - int(f_dim / 2) + t_dim, :]
    else:
        new = F.interpolate(new, size=(f_dim, t_dim), mode="bilinear")
    return torch.cat([pos[:, :2], new.reshape(1, dim, f_dim * t_dim).transpose(1, 2)], dim=1)


def _reference_finetune_logits(sd: dict, wav: torch.Tensor, head: dict, strides: tuple[int, int], heads: int,
                               target_length: int = 512) -> torch.Tensor:
    """src/dataloader.py `_wav2fbank` + `__getitem__` (eval: no masks, no noise) and ASTModel(pretrain_stage=False)
    `forward` -> `finetuningavgtok`, in float64 from the official state dict (timm 0.4.5 blocks written out)."""
    w = {k.removeprefix("module."): v.double() for k, v in sd.items() if v.is_floating_point()}
    wav = wav[None] - wav.mean()
    fbank = kaldi.fbank(wav, htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
                        num_mel_bins=128, dither=0.0, frame_shift=10)
    p = target_length - fbank.shape[0]
    fbank = F.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank[:target_length]
    x = ((fbank - ESC50_MEAN) / (ESC50_STD * 2)).double()[None]  # (1, T, 128)
    x = x.unsqueeze(1).transpose(2, 3)  # ASTModel.forward
    kernel = w["v.patch_embed.proj.weight"]
    x = F.conv2d(x, kernel, w["v.patch_embed.proj.bias"], stride=strides)
    grid = (x.shape[2], x.shape[3])
    fshape, tshape = kernel.shape[2:]
    p_grid = (128 // fshape, int(sd["module.p_input_tdim"]) // tshape)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["v.cls_token"], w["v.dist_token"], x], dim=1)
    x = x + _reference_pos_embed(w["v.pos_embed"], p_grid, grid)
    from test_pretrain_fidelity import deit_blocks

    x = deit_blocks(w, x, heads, prefix="v.")
    dim = x.shape[-1]
    x = F.layer_norm(x, (dim,), w["v.norm.weight"], w["v.norm.bias"], eps=1e-6)
    x = torch.mean(x[:, 2:, :], dim=1)
    x = F.layer_norm(x, (dim,), head["norm.weight"].double(), head["norm.bias"].double())  # mlp_head
    return (x @ head["classifier.weight"].double().T + head["classifier.bias"].double())[0]


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_global_finetune_forward_matches_ssast_reference_on_esc50(tmp_path, tokenizer):
    """A converted official checkpoint under SSAST's fine-tuning input + ft_avgtok head gives the logits of a port of
    ASTModel(pretrain_stage=False) + finetuningavgtok on 5 s (and 3 s) clips with ESC-50 statistics."""
    from test_official import ssast_state_dict

    from maebench.downstream.heads import AvgTokHead
    from maebench.upstream import load
    from maebench.upstream.ssast import GlobalInput

    sd = ssast_state_dict(tokenizer, dim=192, depth=2, tdim=1024, seed=5)  # published pretraining grid
    torch.save(sd, tmp_path / "ssast.pth")
    model = load(tmp_path / "ssast.pth").eval()
    model.use_global_input(GlobalInput(512, ESC50_MEAN, ESC50_STD))
    rows, cols = model.global_grid(512)
    assert (rows, cols) == ((12, 50) if tokenizer == "patch" else (1, 511))
    head = AvgTokHead(rows * 192, 50, token_dim=192)
    with torch.no_grad():
        for param in head.parameters():
            param.normal_(0, 0.3)
    wavs, lens = speech_batch([5 * SR, 3 * SR], seed=4)
    with torch.no_grad():
        ours = head.forward_features(model(wavs, lens))
    strides = (model.config.fstride, model.config.tstride)
    assert strides == ((10, 10) if tokenizer == "patch" else (128, 1))  # run_esc_patch.sh / run_esc_frame.sh
    for b in range(2):
        reference = _reference_finetune_logits(sd, wavs[b, : lens[b]], head.state_dict(), strides, heads=3)
        torch.testing.assert_close(ours[b].double(), reference, atol=1e-5, rtol=0)


def test_global_input_order_padding_noise_and_positional_parameter():
    """Pad, then SpecAugment, then normalise (padding -> -mean / (2 std)), then noise (dataloader.py order); the
    positional table is a parameter of its own fitted once; the superb variant pads with exact zeros."""
    from maebench.upstream.ssast import GlobalInput

    model = tiny("frame").train()
    seen = {}
    model.fbank_augment = lambda f: seen.setdefault("fbank", f.clone())
    model.input_augment = lambda x: seen.setdefault("input", x.clone())
    model.use_global_input(GlobalInput(128, ESC50_MEAN, ESC50_STD))
    assert model.global_pos_embed.shape == (1, 2 + 127, 64) and model.global_pos_embed.requires_grad
    torch.testing.assert_close(model.global_pos_embed.detach(), adapt_pos_embed(model.pos_embed.detach(), (1, 64),
                                                                               (1, 127)))
    wavs, lens = speech_batch([8000, 16000])
    out = model(wavs, lens)
    assert seen["fbank"].shape == (2, 128, 128) and (seen["fbank"][0, 48:] == 0).all()  # 8000 samples = 48 frames
    assert (seen["fbank"][0, :48] != 0).any()
    pad_value = -ESC50_MEAN / (2 * ESC50_STD)
    torch.testing.assert_close(seen["input"][0, 48:], torch.full((80, 128), pad_value))
    assert out.last_hidden_state.shape == (2, 127, 64) and out.lens.tolist() == [48, 98]
    out.last_hidden_state.sum().backward()
    assert model.global_pos_embed.grad is not None and model.pos_embed.grad is None
    superb = tiny("patch").eval()
    superb.use_global_input(GlobalInput(100, -4.2677393, 4.5689974, normalise_padding=False, layout="tokens"))
    superb.input_augment = lambda x: seen.setdefault("superb", x.clone())
    superb.train()
    features = superb(wavs, lens)
    assert (seen["superb"][0, 48:] == 0).all() and (seen["superb"][0, :48] != 0).all()
    assert features.hidden_states[0].shape == (2, 9 * 12, 64) and features.lens.tolist() == [5 * 12, 9 * 12]
    superb.use_global_input(None)
    assert superb.global_pos_embed is None and superb(wavs, lens).last_hidden_state is None
