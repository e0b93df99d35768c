"""MAE-AST: tokenisation, feature path against an independent float64 re-implementation of s3prl's algorithm,
padding invariance, pretraining loss (shapes, InfoNCE at init, float64 recomputation, visible-only encoder, no
learning from padding, input dropout, public chunk masks), FLOPs."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import speech_batch, speechlike
from torch.utils.flop_counter import FlopCounterMode
from torchaudio.compliance import kaldi

from maebench.errors import MaebenchError
from maebench.upstream import registry
from maebench.upstream.frontend import frames_to_samples, num_frames
from maebench.upstream.mae_ast import MaeAst, MaeAstConfig
from maebench.upstream.masking import chunk_mask

SMALL = {"dim": 64, "num_heads": 2, "ffn_dim": 128, "depth": 2, "decoder_depth": 1}


def small_model(tokenizer: str = "patch", **overrides) -> MaeAst:
    return MaeAst(MaeAstConfig(tokenizer=tokenizer, **{**SMALL, **overrides}))






# ---- tokenisation and features ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_tokens_are_unfold_patches_in_time_major_order(tokenizer):
    model = small_model(tokenizer)
    x = torch.randn(2, 101, 128)  # 101 frames: the partial last token is dropped
    tokens = model._tokenise(x)
    reference = F.unfold(x[:, None], kernel_size=(model.ktime, model.kchan), stride=(model.ktime, model.kchan))
    assert torch.equal(tokens, reference.transpose(1, 2))
    # token t * (128 // kchan) + c holds frames [t*kt, (t+1)*kt) and mel bins [c*kc, (c+1)*kc)
    t, c = 3, 128 // model.kchan - 1
    patch = x[0, t * model.ktime : (t + 1) * model.ktime, c * model.kchan : (c + 1) * model.kchan]
    assert torch.equal(tokens[0, t * model.tokens_per_step + c], patch.reshape(-1))


def _reference_features(model: MaeAst, wav: torch.Tensor) -> list[torch.Tensor]:
    """s3prl's mae_ast feature path (per utterance, fairseq post-LN layers), rewritten in float64 from scratch.

    Returns the flat token sequences (tokens, dim) per encoder layer, the layout s3prl returns.
    """
    sd = {k: v.double() for k, v in model.state_dict().items()}
    fb = kaldi.fbank(wav[None], sample_frequency=16000, use_energy=False, num_mel_bins=128).double()
    x = (fb - sd["batch_norm.running_mean"]) / torch.sqrt(sd["batch_norm.running_var"] + 1e-5) * 0.5
    kt, kc = model.ktime, model.kchan
    patches = F.unfold(x[None, None], (kt, kc), stride=(kt, kc))[0].T  # (N, kt*kc)
    n, d = patches.shape[0], model.config.dim
    position = torch.arange(n, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    h = patches @ sd["patch_embed.weight"].T + sd["patch_embed.bias"] + pe

    def ln(v, name):
        return F.layer_norm(v, (d,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)

    h = ln(h, "encoder_norm")
    heads, hd = model.config.num_heads, d // model.config.num_heads
    outputs = []
    for i in range(model.config.depth):
        p = f"encoder.{i}."
        w_q, w_k, w_v = sd[p + "attn.qkv.weight"].chunk(3)
        b_q, b_k, b_v = sd[p + "attn.qkv.bias"].chunk(3)
        q = ((h @ w_q.T + b_q) * hd**-0.5).view(n, heads, hd).transpose(0, 1)
        k = (h @ w_k.T + b_k).view(n, heads, hd).transpose(0, 1)
        v = (h @ w_v.T + b_v).view(n, heads, hd).transpose(0, 1)
        attn = torch.softmax(q @ k.transpose(1, 2), -1) @ v
        attn = attn.transpose(0, 1).reshape(n, d) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = ln(h + attn, p + "norm1")
        ffn = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        h = ln(h + ffn @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"], p + "norm2")
        outputs.append(h)
    return outputs


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_features_match_float64_reference(tokenizer):
    model = small_model(tokenizer).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a pretrained model has
        model.batch_norm.running_mean.fill_(-6.0)
        model.batch_norm.running_var.fill_(20.0)
    wav = speechlike(21_000)  # 130 frames: not a multiple of 16 (patch) frames
    with torch.no_grad():
        features = model(wav[None], torch.tensor([21_000]))
    reference = _reference_features(model, wav)
    assert len(features.hidden_states) == len(reference) == model.num_layers
    for ours, ref in zip(features.hidden_states, reference, strict=True):
        flat = ours[0].reshape(-1, model.config.dim).double()  # (steps * tokens_per_step, dim): s3prl's layout
        assert flat.shape == ref.shape
        assert (flat - ref).abs().max() < 1e-4  # measured ~1e-6


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_padded_batch_equals_single_items(tokenizer):
    model = small_model(tokenizer).eval()
    lengths = [24_000, 17_100, 5_000]
    wavs, lens = speech_batch(lengths)
    with torch.no_grad():
        together = model(wavs, lens)
        assert torch.equal(together.lens, model.output_lens(lens))
        for i, n in enumerate(lengths):
            alone = model(wavs[i : i + 1, :n], lens[i : i + 1])
            valid = int(alone.lens[0])
            assert valid == int(together.lens[i])
            for a, b in zip(alone.hidden_states, together.hidden_states, strict=True):
                assert torch.allclose(a[0, :valid], b[i, :valid], atol=1e-5)
                assert not b[i, valid:].any()  # padded steps are zero


def test_feature_geometry():
    patch, frame = small_model("patch").eval(), small_model("frame").eval()
    assert (patch.downsample_rate, frame.downsample_rate) == (2560, 320)
    assert (patch.hidden_size, frame.hidden_size) == (8 * 64, 64)
    wavs, lens = speech_batch([16_000, 800])  # 1 s and 0.05 s (shorter than one token)
    with torch.no_grad():
        fp, ff = patch(wavs, lens), frame(wavs, lens)
        tiny = patch(wavs[1:, :800], lens[1:])
    # 1 s = 98 frames -> 6 patch steps (96 frames), 49 frame steps; anything shorter still yields one step
    assert fp.hidden_states[0].shape == (2, 6, 512) and fp.lens.tolist() == [6, 1]
    assert ff.hidden_states[0].shape == (2, 49, 64) and ff.lens.tolist() == [49, 1]
    assert tiny.hidden_states[0].shape == (1, 1, 512) and torch.isfinite(tiny.hidden_states[-1]).all()
    assert patch.output_lens(torch.tensor([16_000, 48_000])).tolist() == [6, 18]


def test_features_run_every_layer_and_honour_fbank_augment():
    model = small_model("frame", layerdrop=0.9)
    wavs, lens = speech_batch([8000])
    seen = []
    model.fbank_augment = lambda feats: seen.append(feats.shape) or torch.zeros_like(feats)
    model.train()
    out = model(wavs, lens)
    assert len(out.hidden_states) == model.num_layers  # no layerdrop on the feature path
    assert seen == [(1, 48, 128)]  # 8000 samples = 48 frames
    model.eval()
    model(wavs, lens)
    assert len(seen) == 1  # SpecAugment only in training mode


def test_layerdrop_skips_layers_only_in_pretraining():
    model = small_model("frame", layerdrop=0.5).train()
    x = torch.randn(2, 6, model.config.dim)
    torch.manual_seed(0)
    counts = {len(model._encode(x, None, layerdrop=0.5)) for _ in range(40)}
    assert len(counts) > 1 and max(counts) <= model.num_layers  # a different subset of layers per call
    assert len(model._encode(x, None, layerdrop=1.0)) == 1  # all dropped: the normalised input alone
    model.eval()
    assert len(model._encode(x, None, layerdrop=0.5)) == model.num_layers


# ---- pretraining -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mae_ast_patch:tiny", "mae_ast_frame:tiny", "mae_ast_patch:small"])
def test_preset_pretrain_forward_backward(name):
    model = registry.preset(name, layerdrop=0.0)
    wavs, lens = speech_batch([8_000, 8_000])  # 48 frames: 3 patch steps (24 tokens) or 24 frame tokens
    out = model.pretrain_loss(wavs, lens)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.stats) == {"mse", "nce", "nce_acc"}
    assert all(not s.requires_grad for s in out.stats.values())
    out.loss.backward()
    for name_, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name_
    features = model.eval()(wavs, lens)
    steps = 3 if model.config.tokenizer == "patch" else 24
    assert [h.shape for h in features.hidden_states] == [(2, steps, model.hidden_size)] * 12


def test_base_presets_build_and_extract():
    model = registry.preset("mae_ast_patch:base").eval()
    assert (model.config.dim, model.config.depth, model.config.decoder_depth) == (768, 12, 2)
    assert model.hidden_size == 6144 and model.num_layers == 12
    with torch.no_grad():
        out = model(*speech_batch([4_000]))  # 0.25 s: one patch step
    assert [h.shape for h in out.hidden_states] == [(1, 1, 6144)] * 12
    with torch.device("meta"):  # the frame model differs only in its tokeniser: shapes suffice, no compute
        frame = registry.preset("mae_ast_frame:base")
    assert frame.hidden_size == 768 and frame.downsample_rate == 320 and frame.config.mask_type == "random"
    assert sum(p.numel() for p in frame.parameters()) == sum(p.numel() for p in model.parameters())


def test_mask_counts_follow_the_public_rule():
    model = small_model("patch")
    # 6 steps x 8 = 48 tokens: keep max(1, int(0.25 * 48)) = 12, mask 36
    mask = model.make_mask(4, 6)
    assert mask.shape == (4, 48) and (mask.sum(1) == 36).all()
    assert model.num_masked(3) == 2  # keep max(1, int(0.75)) = 1
    shared = small_model("frame", shared_mask=True).make_mask(3, 49)
    assert (shared == shared[:1]).all() and (shared.sum(1) == 49 - 12).all()


def test_infonce_at_init_is_ln_m():
    """With near-zero classification logits every masked token is equally likely: InfoNCE = ln(M).

    The default init does not give small logits (the targets are 256-d normalised fbank patches, so random head
    outputs dotted with them spread by several units), so the class head is re-initialised small here.
    """
    model = small_model("patch").eval()
    with torch.no_grad():
        model.class_head.weight.normal_(0, 1e-4)
        model.class_head.bias.zero_()
    out = model.pretrain_loss(*speech_batch([16_000, 16_000]))
    m = 36  # 48 tokens, 12 kept
    assert abs(out.stats["nce"].item() - math.log(m)) < 0.01
    assert out.stats["nce_acc"].item() < 0.2  # chance is 1/36


def test_loss_matches_float64_recomputation():
    model = small_model("frame").eval()
    wavs, lens = speech_batch([16_000, 16_000])
    mask = model.make_mask(2, 49)
    captured = {}
    hook = model.class_head.register_forward_hook(lambda mod, inp, out: captured.update(decoded=inp[0]))
    out = model.pretrain_loss(wavs, lens, mask=mask)
    hook.remove()

    decoded = captured["decoded"].double()  # (B, M, D): decoder outputs at the masked positions, ascending
    fb = torch.stack([kaldi.fbank(w[None], sample_frequency=16000, use_energy=False, num_mel_bins=128) for w in wavs])
    x = fb.double() / math.sqrt(1 + 1e-5) * 0.5  # fresh BatchNorm running stats: mean 0, var 1
    patches = F.unfold(x[:, None], (2, 128), stride=(2, 128)).transpose(1, 2)
    target = torch.stack([patches[b][mask[b]] for b in range(2)])
    recon = decoded @ model.recon_head.weight.double().T + model.recon_head.bias.double()
    pred = decoded @ model.class_head.weight.double().T + model.class_head.bias.double()
    mse = ((recon - target) ** 2).mean()
    nce = torch.stack([F.cross_entropy(pred[b] @ target[b].T, torch.arange(target.shape[1])) for b in range(2)]).mean()
    assert abs(out.stats["mse"].item() - mse.item()) < 1e-4
    assert abs(out.stats["nce"].item() - nce.item()) < 1e-3 * max(1.0, nce.item())
    assert abs(out.loss.item() - (10 * mse + nce).item()) < 2e-3 * max(1.0, out.loss.item())


def test_encoder_sees_only_visible_tokens(monkeypatch):
    """Changing the fbank under a masked patch leaves the encoder output unchanged; under a visible one it does not.

    Eval mode: BatchNorm uses running statistics. (In training mode its batch statistics are computed over the
    whole input, masked patches included, exactly as in the public code.)
    """
    model = small_model("patch").eval()
    feats = torch.randn(1, 96, 128)
    frame_lens = torch.tensor([96])
    mask = model.make_mask(1, 6)
    encoded = []
    model.encoder[-1].register_forward_hook(lambda mod, inp, out: encoded.append(out.detach().clone()))

    def run(f):
        monkeypatch.setattr(model, "_fbank", lambda wavs, lens: (f, frame_lens))
        with torch.no_grad():
            model.pretrain_loss(torch.zeros(1, 16_000), torch.tensor([16_000]), mask=mask)
        return encoded[-1]

    def perturb(token: int) -> torch.Tensor:
        t, c = divmod(token, 8)
        changed = feats.clone()
        changed[0, t * 16 : (t + 1) * 16, c * 16 : (c + 1) * 16] += 3.0
        return changed

    base = run(feats)
    masked_token = int(mask[0].nonzero()[0])
    visible_token = int((~mask[0]).nonzero()[0])
    assert torch.equal(run(perturb(masked_token)), base)
    assert not torch.allclose(run(perturb(visible_token)), base)
    assert base.shape == (1, 12, 64)  # only the 12 visible tokens entered the encoder


# ---- no learning from padding (the public loader's pad_audio: false) -------------------------------------------
def _padded_to(wavs: torch.Tensor, width: int, fill: float = 0.0) -> torch.Tensor:
    return F.pad(wavs, (0, width - wavs.shape[1]), value=fill)


def _train_step_outputs(model: MaeAst, wavs: torch.Tensor, lens: torch.Tensor, seed: int = 3):
    """(loss, stats, BatchNorm running mean and var, masked-token count) of one train-mode pretraining step."""
    torch.manual_seed(seed)
    model.batch_norm.reset_running_stats()
    seen = {}
    hook = model.recon_head.register_forward_hook(lambda mod, inp, out: seen.update(masked=inp[0].shape[1]))
    out = model.pretrain_loss(wavs, lens)
    hook.remove()
    bn = model.batch_norm
    return out.loss.detach(), out.stats, bn.running_mean.clone(), bn.running_var.clone(), seen["masked"]


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_more_padding_changes_nothing_in_training(tokenizer):
    """Train mode, same seed: the same batch with more zero padding appended (same lens) gives the same loss and
    BatchNorm statistics; padding filled with NaN instead of zeros too, so no padded sample is ever read."""
    model = small_model(tokenizer).train()  # dropout, dropout_input and layerdrop as configured
    wavs, lens = speech_batch([9_000, 16_000, 12_000])
    base = _train_step_outputs(model, wavs, lens)
    for padded in (_padded_to(wavs, 24_000), _padded_to(wavs, 40_000, fill=float("nan"))):
        if torch.isnan(padded).any():
            for row, n in zip(padded, lens, strict=True):
                row[n:] = float("nan")  # the padding inside the batch too
        again = _train_step_outputs(model, padded, lens)
        assert torch.equal(again[0], base[0]) and torch.isfinite(again[0])
        assert all(torch.equal(again[1][k], base[1][k]) for k in base[1])
        assert torch.equal(again[2], base[2]) and torch.equal(again[3], base[3]) and again[4] == base[4]


def test_targets_and_batchnorm_see_only_the_shortest_clip():
    """What the loss learns from is the batch cut to its shortest clip: the masked-token count is that of 9,000
    samples, and the BatchNorm update matches torchaudio's Kaldi fbank of the cut clips (momentum 0.1)."""
    model = small_model("patch").train()
    wavs, lens = speech_batch([9_000, 16_000, 12_000])
    loss, _, running_mean, running_var, masked = _train_step_outputs(model, _padded_to(wavs, 20_000), lens)
    tokens = (num_frames(9_000, model.frontend) // 16) * 8
    assert masked == model.num_masked(tokens)
    cut = torch.stack([kaldi.fbank(w[None, :9_000], sample_frequency=16000, use_energy=False, num_mel_bins=128)
                       for w in wavs]).double()
    assert running_mean.item() == pytest.approx(0.1 * cut.mean().item(), rel=1e-4)
    assert running_var.item() == pytest.approx(0.9 + 0.1 * cut.var().item(), rel=1e-4)
    cropped = _train_step_outputs(model, wavs[:, :9_000].clone(), torch.full((3,), 9_000))
    assert torch.equal(cropped[0], loss)


def test_dropout_input_drops_token_embeddings_in_pretraining_only():
    """dropout_input (0.1 by default, the public config) zeroes embedding entries before positions are added, in
    train-mode pretraining only: never in eval mode, never in the feature path."""
    assert MaeAstConfig().dropout_input == 0.1
    quiet = {"dropout": 0.1, "attn_dropout": 0.0, "layerdrop": 0.0}
    model = small_model("patch", dropout_input=0.5, **{**quiet, "dropout": 0.0})
    wavs, lens = speech_batch([16_000, 16_000])
    mask = model.make_mask(2, 6)
    keep = (~mask).nonzero()[:, 1].view(2, -1)
    seen = {}
    model.patch_embed.register_forward_hook(lambda mod, inp, out: seen.update(embed=out.detach()))
    model.encoder_norm.register_forward_hook(lambda mod, inp, out: seen.update(enc_in=inp[0].detach()))

    def embedded_minus_positions(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.train(train)
        with torch.no_grad():
            model.pretrain_loss(wavs, lens, mask=mask)
        positions = model._positions_for(48, seen["embed"])
        embed = torch.stack([seen["embed"][b, keep[b]] for b in range(2)])
        return seen["enc_in"] - positions[keep], embed

    got, embed = embedded_minus_positions(train=True)
    dropped = got.abs() < 1e-6
    assert 0.4 < dropped.float().mean().item() < 0.6
    torch.testing.assert_close(got[~dropped], 2 * embed[~dropped], rtol=1e-5, atol=1e-5)  # survivors scaled 1/(1-p)
    got, embed = embedded_minus_positions(train=False)
    torch.testing.assert_close(got, embed, rtol=1e-5, atol=1e-5)

    model = small_model("patch", dropout_input=0.9, **quiet)  # dropout 0.1 draws the same stream in both
    plain = small_model("patch", dropout_input=0.0, **quiet)
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    with_dropout = model.train()(wavs, lens).hidden_states[-1]
    torch.manual_seed(0)
    assert torch.equal(with_dropout, plain.train()(wavs, lens).hidden_states[-1])  # features: no input dropout


def test_patch_masks_are_drawn_as_the_public_code_draws_them():
    model = small_model("patch")
    assert model.config.mask_chunk_style == "public"
    drawn = model.make_mask(4, 64, generator=torch.Generator().manual_seed(1))
    expected = chunk_mask(4, (64, 8), 384, style="public", shared=True, trim="lowest",
                          generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, expected)
    with pytest.raises(MaebenchError, match="mask_chunk_style"):
        MaeAstConfig(mask_chunk_style="clustered")
    with pytest.raises(MaebenchError, match="mask_trim"):
        MaeAstConfig(mask_trim="last")
    with pytest.raises(MaebenchError, match="dropout_input"):
        MaeAstConfig(dropout_input=1.0)


def _math_attention(q, k, v, attn_mask=None, dropout_p=0.0, **_):
    """SDPA written as plain matmuls, so FlopCounterMode sees the attention FLOPs on CPU too."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def test_pretrain_flops_match_flop_counter(monkeypatch):
    """pretrain_flops = 3 x the forward matmul FLOPs, which FlopCounterMode counts independently."""
    model = small_model("patch", layerdrop=0.0)
    wavs, lens = speech_batch([32_000])
    feats = model._fbank(wavs, lens)  # the filterbank is not model FLOPs: computed outside the counter
    monkeypatch.setattr(model, "_fbank", lambda w, n: feats)
    monkeypatch.setattr(F, "scaled_dot_product_attention", _math_attention)
    counter = FlopCounterMode(display=False)
    with counter:
        model.pretrain_loss(wavs, lens)
    assert model.pretrain_flops(32_000) == 3 * counter.get_total_flops()
    assert model.pretrain_flops(300) == 0.0


def test_too_short_for_pretraining_and_bad_config():
    with pytest.raises(MaebenchError, match="at least 2800 samples"):
        small_model("patch").pretrain_loss(torch.zeros(1, 2000), torch.tensor([2000]))
    with pytest.raises(MaebenchError, match="tokenizer"):
        MaeAstConfig(tokenizer="spectrogram")
    with pytest.raises(MaebenchError, match="unknown field"):
        MaeAst.from_config({"tokenizer": "patch", "layers": 3})
    with pytest.raises(MaebenchError, match="num_heads"):
        MaeAstConfig(dim=64, num_heads=5)
    assert MaeAstConfig(tokenizer="frame").mask_type == "random"
    assert MaeAst.from_config(small_model("frame").to_config()).to_config() == small_model("frame").to_config()


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_min_input_samples_is_one_whole_token(tokenizer):
    model = small_model(tokenizer).eval()
    shortest = model.min_input_samples()
    assert shortest == {"patch": 2800, "frame": 560}[tokenizer] == frames_to_samples(model.ktime)
    assert num_frames(shortest) == model.ktime and num_frames(shortest - 1) < model.ktime
    # 0.1.0 padded short clips to downsample_rate + 400 samples: zeros past one whole token change nothing
    wav = speechlike(1000)[None]
    old = model.downsample_rate + 400
    with torch.no_grad():
        a = model(F.pad(wav, (0, shortest - 1000)), torch.tensor([shortest]))
        b = model(F.pad(wav, (0, old - 1000)), torch.tensor([old]))
    assert a.lens.tolist() == b.lens.tolist() == [1]
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)
