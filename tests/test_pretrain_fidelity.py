"""Pretraining as the references do it (issue 20): float64 ports of both references' pretraining losses fed the same
weights and masks, and their mask-drawing loops compared with maebench's masks in distribution.

The ports are written here from the references' math (YuanGongND/ssast src/models/ast_models.py `mpc`, `mpg`,
`gen_maskid_patch` and src/dataloader.py `_wav2fbank`; AlanBaade/MAE-AST-Public mae_ast/models/mae_ast.py
`forward_mask` and `forward`), plain loops over clips like theirs, nothing shared with the code under test.
"""

from __future__ import annotations

import math
import random

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers import speechlike
from torchaudio.compliance import kaldi

from maebench.upstream.mae_ast import MaeAst, MaeAstConfig
from maebench.upstream.masking import chunk_mask
from maebench.upstream.ssast import Ssast, SsastConfig

SR = 16000
SSAST_MEAN, SSAST_STD = -4.2677393, 4.5689974


# ---------------------------------------------------------------------------------------------------- SSAST loss
def _ssast_fbank(wav: torch.Tensor, target_length: int) -> torch.Tensor:
    """dataloader.py `_wav2fbank` + normalisation: the whole file's fbank (mean removed), its first target_length
    frames (zero-padded when shorter), then (x - mean) / (2 std). (T, 128) float64."""
    wav = wav[None] - wav.mean()
    fbank = kaldi.fbank(wav, htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
                        num_mel_bins=128, dither=0.0, frame_shift=10)
    p = target_length - fbank.shape[0]
    fbank = F.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank[:target_length]
    return ((fbank - SSAST_MEAN) / (SSAST_STD * 2)).double()


def _ssast_encoder(w: dict, x: torch.Tensor, mask_index: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """ASTModel pretraining forward of one clip: (input patches (L, 256), encoder output (2 + L, D)) for a
    (1, 1, 128, T) spectrogram with the tokens in `mask_index` replaced by mask_embed (timm blocks written out)."""
    kernel = w["patch_embed.proj.weight"]
    fshape, tshape = kernel.shape[2:]
    patches = F.unfold(x, (fshape, tshape), stride=(fshape, tshape))[0].T  # self.unfold(x).transpose(1, 2)
    tokens = F.conv2d(x, kernel, w["patch_embed.proj.bias"], stride=(fshape, tshape)).flatten(2).transpose(1, 2)
    dense = torch.ones_like(tokens)
    dense[:, mask_index] = 0
    tokens = tokens * dense + (1 - dense) * w["mask_embed"]
    h = deit_blocks(w, torch.cat([w["cls_token"], w["dist_token"], tokens], dim=1) + w["pos_embed"], heads)
    return patches, F.layer_norm(h, (h.shape[-1],), w["norm.weight"], w["norm.bias"], eps=1e-6)[0]


def deit_blocks(w: dict, h: torch.Tensor, heads: int, prefix: str = "") -> torch.Tensor:
    """timm's pre-LN ViT blocks `{prefix}blocks.{i}.*` (LayerNorm eps 1e-6, no dropout) over (1, N, D), written out."""
    dim = h.shape[-1]
    depth = len({k.removeprefix(prefix).split(".")[1] for k in w if k.startswith(prefix + "blocks.")})
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        y = F.layer_norm(h, (dim,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
        qkv = (y @ w[b + "attn.qkv.weight"].T + w[b + "attn.qkv.bias"]).reshape(1, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (dim // heads) ** -0.5, dim=-1) @ v
        h = h + attn.transpose(1, 2).reshape(1, -1, dim) @ w[b + "attn.proj.weight"].T + w[b + "attn.proj.bias"]
        y = F.layer_norm(h, (dim,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
        h = h + F.gelu(y @ w[b + "mlp.fc1.weight"].T + w[b + "mlp.fc1.bias"]) @ w[b + "mlp.fc2.weight"].T
        h = h + w[b + "mlp.fc2.bias"]
    return h


def _head(w: dict, name: str, h: torch.Tensor) -> torch.Tensor:
    return torch.relu(h @ w[f"{name}.0.weight"].T + w[f"{name}.0.bias"]) @ w[f"{name}.2.weight"].T + w[f"{name}.2.bias"]


def _ssast_reference_loss(model: Ssast, wavs: list[torch.Tensor], masks: torch.Tensor, paper: bool) -> dict:
    """`pretrain_joint` (traintest_mask.py): mpc (InfoNCE, `total = encode_samples @ pred^T`, log-softmax over the
    last axis, i.e. over the predictions) + 10 * mpg (MSE), both here with the same mask per clip. `paper`: the
    paper's eq. (1) instead, normalising each prediction's scores over the targets."""
    w = {k: v.double() for k, v in model.state_dict().items()}
    nce, mse, correct, count = 0.0, 0.0, 0.0, 0
    for wav, mask in zip(wavs, masks, strict=True):
        x = _ssast_fbank(wav, model.config.target_frames)[None].unsqueeze(1).transpose(2, 3)  # ASTModel.forward
        mask_index = mask.nonzero().flatten()
        patches, out = _ssast_encoder(w, x, mask_index, model.config.num_heads)
        target = patches[mask_index]  # encode_samples[i]
        pred = _head(w, "cpredlayer", out[mask_index + 2])
        total = target @ pred.T if not paper else pred @ target.T
        nce = nce + torch.diag(torch.log_softmax(total, dim=-1)).sum()
        scores = target @ pred.T
        correct += float((scores.argmax(dim=0) == torch.arange(len(mask_index))).sum())
        mse = mse + ((_head(w, "gpredlayer", out[mask_index + 2]) - target) ** 2).sum()
        count += len(mask_index)
    nce, mse = -nce / count, mse / (count * patches.shape[1])
    return {"nce": nce, "mse": mse, "loss": nce + 10 * mse, "nce_acc": correct / count}


def _randomised_ssast(tokenizer: str, **fields) -> Ssast:
    """A tiny SSAST (128 frames) whose every parameter is random, so no term of the loss is trivially zero."""
    model = Ssast(SsastConfig(tokenizer=tokenizer, dim=64, num_heads=2, depth=2, target_frames=128, **fields))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
@pytest.mark.parametrize("lengths", [[20_000, 20_000], [9_000, 20_000, 30_000]], ids=["equal", "ragged"])
@pytest.mark.parametrize("orientation", ["code", "paper"])
def test_ssast_pretrain_loss_matches_the_reference(tokenizer, lengths, orientation):
    """Clips shorter and longer than target_frames (padded / cut after the whole file's fbank, as dataloader.py):
    loss, InfoNCE, MSE and accuracy of a float64 port of the authors' code to 1e-5."""
    model = _randomised_ssast(tokenizer, nce_orientation=orientation)
    wavs = [speechlike(n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(wavs), max(lengths))
    for row, wav in zip(batch, wavs, strict=True):
        row[: len(wav)] = wav
    masks = model.sample_mask(len(wavs), generator=torch.Generator().manual_seed(1))
    out = model.pretrain_loss(batch, torch.tensor(lengths), mask=masks)
    reference = _ssast_reference_loss(model, wavs, masks, paper=orientation == "paper")
    ours = {"loss": out.loss.detach(), **out.stats}
    for name in ("loss", "nce", "mse", "nce_acc"):
        assert abs(float(ours[name]) - float(reference[name])) < 1e-5, name


def test_ssast_orientations_differ_and_default_is_the_code():
    """The two InfoNCE forms are different losses (so the test above can tell them apart); the code's is default."""
    assert SsastConfig().nce_orientation == "code"
    assert Ssast(SsastConfig(depth=1, dim=64, num_heads=2)).to_config()["nce_orientation"] == "code"  # config.json
    model = _randomised_ssast("frame")
    wavs = [speechlike(20_000, seed=i) for i in range(2)]
    masks = model.sample_mask(2, generator=torch.Generator().manual_seed(1))
    code = _ssast_reference_loss(model, wavs, masks, paper=False)["nce"]
    paper = _ssast_reference_loss(model, wavs, masks, paper=True)["nce"]
    assert abs(float(code - paper)) > 1e-3


# ---------------------------------------------------------------------------------------------------- MAE-AST loss
def _post_ln_layer(w: dict, p: str, h: torch.Tensor, heads: int) -> torch.Tensor:
    """fairseq's TransformerSentenceEncoderLayer, layer_norm_first False, no dropout: (B, N, D) -> (B, N, D)."""
    b, n, d = h.shape
    q, k, v = (h @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    attn = (torch.softmax((q * (d // heads) ** -0.5) @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).reshape(b, n, d)
    h = F.layer_norm(h + attn @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"], (d,), w[p + "norm1.weight"],
                     w[p + "norm1.bias"], eps=1e-5)
    ffn = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"]) @ w[p + "mlp.fc2.weight"].T
    return F.layer_norm(h + ffn + w[p + "mlp.fc2.bias"], (d,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-5)


def _mae_ast_reference_loss(model: MaeAst, wavs: list[torch.Tensor], masks: torch.Tensor, train: bool) -> dict:
    """MAE-AST-Public `forward` + MAE_AST_Criterion on one collated batch (every clip already cut to the batch's
    shortest, as the collater does): Kaldi fbank, BatchNorm2d(1, affine=False) (batch statistics when `train`) * 0.5,
    unfold, post_extract_proj, sine positions, encoder (input LayerNorm, post-LN layers) over the retained tokens,
    decoder over all (decoder_mask_emb at masked positions, positions again), heads on the masked tokens;
    loss = 10 * MSE + InfoNCE (log-softmax of logits @ targets^T over targets)."""
    w = {k: v.double() for k, v in model.state_dict().items()}
    heads, kt, kc = model.config.num_heads, model.ktime, model.kchan
    fbank = torch.stack([kaldi.fbank(x[None], sample_frequency=SR, use_energy=False, num_mel_bins=128)
                         for x in wavs]).double()
    if train:
        mean, var = fbank.mean(), fbank.var(unbiased=False)
    else:
        mean, var = w["batch_norm.running_mean"], w["batch_norm.running_var"]
    x = (fbank - mean) / torch.sqrt(var + 1e-5) * 0.5
    source_patch = F.unfold(x[:, None], (kt, kc), stride=(kt, kc)).transpose(1, 2)  # (B, T, 256)
    b, t, _ = source_patch.shape
    d = w["patch_embed.weight"].shape[0]
    position = torch.arange(t, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    features = source_patch @ w["patch_embed.weight"].T + w["patch_embed.bias"] + pe
    retained = [(~m).nonzero().flatten() for m in masks]
    h = F.layer_norm(torch.stack([features[i, r] for i, r in enumerate(retained)]), (d,), w["encoder_norm.weight"],
                     w["encoder_norm.bias"], eps=1e-5)
    for i in range(model.config.depth):
        h = _post_ln_layer(w, f"encoder.{i}.", h, heads)
    full = w["decoder_mask_token"].expand(b, t, d).clone()
    for i, r in enumerate(retained):
        full[i, r] = h[i]
    h = F.layer_norm(full + pe, (d,), w["decoder_norm.weight"], w["decoder_norm.bias"], eps=1e-5)
    for i in range(model.config.decoder_depth):
        h = _post_ln_layer(w, f"decoder.{i}.", h, heads)
    num_masked = int(masks[0].sum())
    x_masked = h[masks].view(b, num_masked, -1)
    target = source_patch[masks].view(b, num_masked, -1)
    recon = x_masked @ w["recon_head.weight"].T + w["recon_head.bias"]
    logits = (x_masked @ w["class_head.weight"].T + w["class_head.bias"]) @ target.transpose(-1, -2)
    mse = F.mse_loss(recon, target)
    nce = -torch.mean(torch.diagonal(torch.log_softmax(logits, dim=-1), dim1=-2, dim2=-1))
    acc = (logits.argmax(-1) == torch.arange(num_masked)).double().mean()
    return {"loss": 10 * mse + nce, "mse": mse, "nce": nce, "nce_acc": acc}


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
@pytest.mark.parametrize("lengths", [[16_000, 16_000], [12_000, 16_000, 20_000]], ids=["equal", "ragged"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_mae_ast_pretrain_loss_matches_the_reference(tokenizer, lengths, train):
    """A padded batch (ragged: cut to its shortest clip, as the public collater delivers it) and the model's default
    masks; BatchNorm with running (eval) or batch (train, dropouts off) statistics: loss and parts to 1e-5."""
    model = MaeAst(MaeAstConfig(tokenizer=tokenizer, dim=32, num_heads=2, ffn_dim=64, depth=2, decoder_depth=1,
                                dropout=0.0, attn_dropout=0.0, dropout_input=0.0, layerdrop=0.0))
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        model.batch_norm.running_mean.fill_(-3.0)
        model.batch_norm.running_var.fill_(9.0)
    model.train(train)
    wavs = [speechlike(n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(wavs), max(lengths))
    for row, wav in zip(batch, wavs, strict=True):
        row[: len(wav)] = wav
    shortest = min(lengths)
    steps = (1 + (shortest - 400) // 160) // model.ktime
    masks = model.make_mask(len(wavs), steps, generator=torch.Generator().manual_seed(2))
    out = model.pretrain_loss(batch, torch.tensor(lengths), mask=masks)
    reference = _mae_ast_reference_loss(model, [wav[:shortest] for wav in wavs], masks, train)
    ours = {"loss": out.loss.detach(), **out.stats}
    for name in ("loss", "nce", "mse", "nce_acc"):
        assert abs(float(ours[name]) - float(reference[name])) < 1e-5, name


# ---------------------------------------------------------------------------------------------------- masks
def _ssast_reference_mask(num_tokens: int, num_masked: int, p_t_dim: int, rng: random.Random) -> set[int]:
    """gen_maskid_patch(sequence_len, mask_size, cluster=3): one cluster side in [3, 6) per call (per clip), chunks
    start + p_t_dim * i + j kept when 0 < index < sequence_len, until MORE than mask_size are covered; then
    `list(set(mask_id))[:mask_size]`."""
    mask_id: list[int] = []
    cur_clus = rng.randrange(3) + 3
    while len(set(mask_id)) <= num_masked:
        start_id = rng.randrange(num_tokens)
        for i in range(cur_clus):
            for j in range(cur_clus):
                candidate = start_id + p_t_dim * i + j
                if 0 < candidate < num_tokens:
                    mask_id.append(candidate)
    return set(list(set(mask_id))[:num_masked])


def _mae_ast_reference_mask(num_tokens: int, num_masked: int, chan_adjust: int, rng: random.Random) -> set[int]:
    """`forward_mask`, chunk_mask branch: ONE mask for the batch, chunk side in [3, 5], tokens t_topleft + t_offset
    + chan_adjust * c_offset below T, until MORE than the count are covered; then `list(set)[:count]`."""
    masked: set[int] = set()
    chunk_size = rng.randrange(3, 5 + 1)
    while len(masked) <= num_masked:
        t_topleft = rng.randrange(num_tokens)
        for t_offset in range(chunk_size):
            for c_offset in range(chunk_size):
                candidate = t_topleft + t_offset + chan_adjust * c_offset
                if candidate < num_tokens:
                    masked.add(candidate)
    return set(list(masked)[:num_masked])


def _frequencies(masks: list[set[int]], num_tokens: int) -> torch.Tensor:
    counts = torch.zeros(num_tokens, dtype=torch.float64)
    for mask in masks:
        counts[list(mask)] += 1
    return counts / len(masks)


DRAWS = 4000
# Two independent estimates of a rate p from DRAWS draws each differ with standard error sqrt(2 p (1 - p) / DRAWS)
# <= sqrt(0.5 / DRAWS) = 0.0112 per position; 5 standard errors: any of 128 positions beyond it by chance is
# ~128 * 5.7e-7 = 7e-5 likely.
TOLERANCE = 5 * math.sqrt(0.5 / DRAWS)


def _assert_same_distribution(ours: torch.Tensor, reference: torch.Tensor, old: torch.Tensor) -> None:
    gap = (ours - reference).abs().max().item()
    assert gap < TOLERANCE, gap
    # the test has power: maebench 0.1.0's masks (random trim) are told apart from the reference's
    assert (old - reference).abs().max().item() > 2 * TOLERANCE


def test_ssast_cluster_masks_match_gen_maskid_patch_in_distribution():
    """8 frequency rows x 16 time columns (128 tokens), 100 masked: per-position masking rate over 4,000 draws."""
    rows, cols, num_masked = 8, 16, 100
    rng = random.Random(0)
    reference = _frequencies([_ssast_reference_mask(rows * cols, num_masked, cols, rng) for _ in range(DRAWS)],
                             rows * cols)
    ours = chunk_mask(DRAWS, (rows, cols), num_masked, style="ssast", trim="lowest",
                      generator=torch.Generator().manual_seed(0))
    old = chunk_mask(DRAWS, (rows, cols), num_masked, style="square", trim="random",
                     generator=torch.Generator().manual_seed(0))
    assert (ours.sum(1) == num_masked).all() and not ours[:, 0].any()  # never token 0
    _assert_same_distribution(ours.double().mean(0), reference, old.double().mean(0))


def test_ssast_model_draws_reference_masks_per_clip():
    """The model's default chunk masks are those of gen_maskid_patch: one per clip, never token 0."""
    model = Ssast(SsastConfig(tokenizer="patch", dim=64, num_heads=2, depth=1, target_frames=256))
    masks = model.sample_mask(8, generator=torch.Generator().manual_seed(2))
    assert len({tuple(row.tolist()) for row in masks}) == 8 and not masks[:, 0].any()
    assert torch.equal(masks, chunk_mask(8, (8, 16), model.config.num_masked, style="ssast", trim="lowest",
                                         generator=torch.Generator().manual_seed(2)))


def test_mae_ast_chunk_masks_match_forward_mask_in_distribution():
    """16 time steps x 8 frequency tokens (128 tokens), 96 masked (75%): per-position rate over 4,000 draws."""
    steps, per_step = 16, 8
    num_masked = 128 - max(1, int(0.25 * 128))
    rng = random.Random(1)
    reference = _frequencies(
        [_mae_ast_reference_mask(steps * per_step, num_masked, per_step, rng) for _ in range(DRAWS)], steps * per_step
    )
    ours = chunk_mask(DRAWS, (steps, per_step), num_masked, style="public", trim="lowest",
                      generator=torch.Generator().manual_seed(1))
    old = chunk_mask(DRAWS, (steps, per_step), num_masked, style="public", trim="random",
                     generator=torch.Generator().manual_seed(1))
    _assert_same_distribution(ours.double().mean(0), reference, old.double().mean(0))


def test_mae_ast_patch_model_shares_one_reference_mask_per_batch():
    """Defaults as the public code: one chunk mask per batch (patch), a random mask per clip (frame)."""
    patch = MaeAst(MaeAstConfig(tokenizer="patch", dim=32, num_heads=2, depth=1, decoder_depth=1))
    assert patch.config.shared_mask and patch.config.mask_trim == "lowest"
    masks = patch.make_mask(6, 16, generator=torch.Generator().manual_seed(4))
    assert (masks == masks[:1]).all()
    assert torch.equal(masks, chunk_mask(6, (16, 8), 96, shared=True, style="public", trim="lowest",
                                         generator=torch.Generator().manual_seed(4)))
    frame = MaeAst(MaeAstConfig(tokenizer="frame", dim=32, num_heads=2, depth=1, decoder_depth=1))
    assert not frame.config.shared_mask
    rows = frame.make_mask(6, 40, generator=torch.Generator().manual_seed(4))
    assert len({tuple(row.tolist()) for row in rows}) == 6


# ---------------------------------------------------------------------------------------------------- SSAST input
def test_ssast_long_clip_input_is_the_first_1024_frames_of_the_whole_file(tmp_path):
    """A 12 s file through the pretraining loader (batch_length fixed, 10.24 s) and the model's input: 1,024 whole
    frames from the file's start, equal to dataloader.py's fbank of the whole file cut to its first 1,024 frames."""
    from helpers import write_wav

    from maebench.manifest import AudioItem
    from maebench.pretrain_data import build_pretrain_loader

    wav = speechlike(12 * SR, seed=5) + 0.01  # a DC offset: the whole file's mean is removed first there
    path = write_wav(tmp_path / "long.wav", wav)
    loader = build_pretrain_loader([AudioItem(path)] * 2, clip_seconds=10.24, batch_size=2, num_workers=0, seed=0)
    batch = next(iter(loader))
    assert batch.wavs.shape == (2, 400 + 1023 * 160)  # exactly 1,024 frames, none of them padding
    stored = torch.as_tensor(sf.read(str(path), dtype="float32")[0])
    assert torch.equal(batch.wavs[0], stored[: 400 + 1023 * 160])  # the file's start, not a random offset
    model = Ssast(SsastConfig(tokenizer="patch", dim=64, num_heads=2, depth=1, target_frames=1024))
    ours = model.pretrain_input(batch.wavs, batch.lens)[0, 0].T.double()  # (1024, 128)
    reference = _ssast_fbank(stored, 1024)
    assert (ours - reference).abs().max().item() < 1e-4
    random = build_pretrain_loader([AudioItem(path)] * 2, clip_seconds=10.24, batch_size=2, num_workers=0, seed=0,
                                   fixed_crop="random")
    assert not torch.equal(next(iter(random)).wavs[0], batch.wavs[0])  # the 0.1.0 behaviour stays an option
