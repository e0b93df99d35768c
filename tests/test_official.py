"""Official SSAST .pth / MAE-AST fairseq .pt checkpoints: detection, conversion, the allow-list unpickler, errors.

The checkpoints are random tensors written here IN THE OFFICIAL KEY LAYOUTS (reference.md sections 3-4; the layouts
are also checked key-for-key against s3prl's own model code in test_s3prl.py). MAE-AST features are checked against
an independent float64 re-implementation of the fairseq layer maths that reads the fairseq weights directly, so the
q/k/v fusion and the renames are verified without s3prl.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import math
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchaudio

from maebench.cli import main as cli_main
from maebench.errors import MaebenchError
from maebench.upstream import load
from maebench.upstream.official import (
    MAE_AST_FORMAT,
    SSAST_FORMAT,
    convert_mae_ast,
    convert_ssast,
    detect_format,
    load_official,
    plain,
    read_checkpoint,
)

# ---------------------------------------------------------------------------------------------------------------
# Checkpoint builders in the official layouts (also imported by test_s3prl.py)
# ---------------------------------------------------------------------------------------------------------------

TOKEN_SHAPES = {"patch": (16, 16), "frame": (128, 2)}  # SSAST conv kernel (mel, time)
MAE_TOKENS = {"patch": (16, 16), "frame": (2, 128)}  # MAE-AST unfold kernel (time, mel)


def _rand(g: torch.Generator, *shape: int, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def ssast_state_dict(tokenizer: str = "patch", dim: int = 192, depth: int = 2, tdim: int = 256, seed: int = 0,
                     prefix: str = "module.") -> OrderedDict:
    """A torch.nn.DataParallel(ASTModel) state dict as the SSAST repository saves it (random weights)."""
    g = torch.Generator().manual_seed(seed)
    fshape, tshape = TOKEN_SHAPES[tokenizer]
    tokens = (128 // fshape) * (tdim // tshape)
    sd: OrderedDict = OrderedDict()
    sd[f"{prefix}p_input_fdim"] = torch.tensor(128)
    sd[f"{prefix}p_input_tdim"] = torch.tensor(tdim)
    sd[f"{prefix}mask_embed"] = _rand(g, 1, 1, dim)
    v = f"{prefix}v."
    sd[v + "cls_token"] = _rand(g, 1, 1, dim)
    sd[v + "dist_token"] = _rand(g, 1, 1, dim)
    sd[v + "pos_embed"] = _rand(g, 1, 2 + tokens, dim)
    sd[v + "patch_embed.proj.weight"] = _rand(g, dim, 1, fshape, tshape, scale=0.05)
    sd[v + "patch_embed.proj.bias"] = _rand(g, dim)
    for i in range(depth):
        b = f"{v}blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = 1 + _rand(g, dim), _rand(g, dim)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = _rand(g, 3 * dim, dim), _rand(g, 3 * dim)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = _rand(g, dim, dim), _rand(g, dim)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = 1 + _rand(g, dim), _rand(g, dim)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = _rand(g, 4 * dim, dim), _rand(g, 4 * dim)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = _rand(g, dim, 4 * dim), _rand(g, dim)
    sd[v + "norm.weight"], sd[v + "norm.bias"] = 1 + _rand(g, dim), _rand(g, dim)
    for head in ("head", "head_dist"):  # timm DeiT's 1000-class heads, unused
        sd[f"{v}{head}.weight"], sd[f"{v}{head}.bias"] = _rand(g, 1000, dim), _rand(g, 1000)
    for pred in ("cpredlayer", "gpredlayer"):
        sd[f"{prefix}{pred}.0.weight"], sd[f"{prefix}{pred}.0.bias"] = _rand(g, dim, dim), _rand(g, dim)
        sd[f"{prefix}{pred}.2.weight"], sd[f"{prefix}{pred}.2.bias"] = _rand(g, 256, dim), _rand(g, 256)
    return sd


def sine_table(n: int, dim: int) -> torch.Tensor:
    """fairseq/MAE-AST's SinusoidalPositionalEncoding buffer (1, n, dim), float32 maths as in the original."""
    position = torch.arange(n).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, n, dim)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


def mae_ast_checkpoint(tokenizer: str = "patch", dim: int = 64, heads: int = 4, ffn: int = 128, enc: int = 2,
                       dec: int = 1, max_tokens: int = 4000, seed: int = 0, mask_type: str = "chunk_mask",
                       fp16: bool = False) -> dict:
    """A fairseq MAE-AST checkpoint dict: cfg.model / cfg.task as plain dicts (the public repo's config fields) and
    the model state dict in MAE_AST's key layout (random weights)."""
    g = torch.Generator().manual_seed(seed)
    ktime, kchan = MAE_TOKENS[tokenizer]
    model_cfg = {
        "_name": "mae_ast", "ast_kernel_size_chan": kchan, "ast_kernel_size_time": ktime,
        "ast_kernel_stride_chan": kchan, "ast_kernel_stride_time": ktime, "encoder_layers": enc,
        "encoder_embed_dim": dim, "encoder_ffn_embed_dim": ffn, "encoder_attention_heads": heads,
        "activation_fn": "gelu", "layer_norm_first": False, "feature_grad_mult": 0.1, "use_post_enc_proj": False,
        "decoder_embed_dim": dim, "decoder_layers": dec, "decoder_layerdrop": 0.0, "dropout": 0.1,
        "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1,
        "random_mask_prob": 0.75, "mask_length": 10, "mask_selection": "static", "mask_other": 0,
        "no_mask_overlap": False, "mask_min_space": 0, "conv_pos": 128, "conv_pos_groups": 16,
        "checkpoint_activations": False, "max_token_length": max_tokens, "enc_sine_pos": True,
        "enc_conv_pos": False, "dec_sine_pos": True, "dec_conv_pos": False,
    }
    task_cfg = {
        "_name": "mae_ast_pretraining", "data": "/data", "sample_rate": 16000, "normalize": False,
        "enable_padding": False, "max_keep_size": None, "max_sample_size": 250000, "min_sample_size": 32000,
        "random_crop": True, "pad_audio": False, "feature_type": "fbank", "feature_rate": 100, "feature_dim": 128,
        "deltas": False, "mask_spans": False, "mask_type": mask_type,
    }
    values = ktime * kchan
    sd: OrderedDict = OrderedDict()
    sd["encoder_mask_emb"] = torch.rand(dim, generator=g)
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = _rand(g, dim, values), _rand(g, dim)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + _rand(g, 128), _rand(g, 128)
    sd["batch_norm.running_mean"] = torch.tensor([-6.5])
    sd["batch_norm.running_var"] = torch.tensor([20.0])
    sd["batch_norm.num_batches_tracked"] = torch.tensor(12345)
    sd["enc_sine_pos_embed.pe"] = sine_table(max_tokens, dim)

    def stack(name: str, layers: int) -> None:
        for i in range(layers):
            p = f"{name}.layers.{i}."
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                sd[f"{p}self_attn.{proj}.weight"] = _rand(g, dim, dim)
                sd[f"{p}self_attn.{proj}.bias"] = _rand(g, dim)
            sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"] = 1 + _rand(g, dim), _rand(
                g, dim)
            sd[p + "fc1.weight"], sd[p + "fc1.bias"] = _rand(g, ffn, dim), _rand(g, ffn)
            sd[p + "fc2.weight"], sd[p + "fc2.bias"] = _rand(g, dim, ffn), _rand(g, dim)
            sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"] = 1 + _rand(g, dim), _rand(g, dim)
        sd[f"{name}.layer_norm.weight"], sd[f"{name}.layer_norm.bias"] = 1 + _rand(g, dim), _rand(g, dim)

    stack("encoder", enc)
    sd["decoder_mask_emb"] = torch.rand(dim, generator=g)
    sd["dec_sine_pos_embed.pe"] = sine_table(max_tokens, dim)
    stack("decoder", dec)
    for head in ("final_proj_reconstruction", "final_proj_classification"):
        sd[f"{head}.weight"], sd[f"{head}.bias"] = _rand(g, values, dim), _rand(g, values)
    if fp16:
        sd = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())
    return {"cfg": {"_name": None, "common": {"fp16": True}, "model": model_cfg, "task": task_cfg}, "model": sd,
            "args": None, "optimizer_history": [{"criterion_name": "MAE_AST_Criterion", "num_updates": 400000}]}


# ---------------------------------------------------------------------------------------------------------------
# Independent float64 reference for MAE-AST features (fairseq layout, one utterance)
# ---------------------------------------------------------------------------------------------------------------


def _layer_norm(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)


def reference_mae_ast(ckpt: dict, wav: torch.Tensor) -> list[torch.Tensor]:
    cfg = ckpt["cfg"]["model"]
    sd = {k: v.double() for k, v in ckpt["model"].items() if v.is_floating_point()}
    ktime, kchan = cfg["ast_kernel_size_time"], cfg["ast_kernel_size_chan"]
    dim, heads = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"]
    fbank = torchaudio.compliance.kaldi.fbank(wav[None].double(), sample_frequency=16000, use_energy=False,
                                              num_mel_bins=128, dither=0.0)
    x = (fbank - sd["batch_norm.running_mean"]) / torch.sqrt(sd["batch_norm.running_var"] + 1e-5) * 0.5
    steps, per_step = x.shape[0] // ktime, 128 // kchan
    tokens = x[: steps * ktime].reshape(steps, ktime, per_step, kchan).permute(0, 2, 1, 3)
    tokens = tokens.reshape(steps * per_step, ktime * kchan)
    n = tokens.shape[0]
    h = tokens @ sd["post_extract_proj.weight"].T + sd["post_extract_proj.bias"] + sine_table(n, dim)[0].double()
    h = _layer_norm(h, sd, "encoder.layer_norm")
    outputs = []
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."

        def proj(name: str, inp: torch.Tensor, p: str = p) -> torch.Tensor:
            return inp @ sd[f"{p}self_attn.{name}.weight"].T + sd[f"{p}self_attn.{name}.bias"]

        q, k, v = (proj(name, h).reshape(n, heads, dim // heads).transpose(0, 1) for name in ("q_proj", "k_proj",
                                                                                              "v_proj"))
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dim // heads), dim=-1) @ v
        h = _layer_norm(h + proj("out_proj", attn.transpose(0, 1).reshape(n, dim)), sd, p + "self_attn_layer_norm")
        ffn = torch.nn.functional.gelu(h @ sd[p + "fc1.weight"].T + sd[p + "fc1.bias"])
        h = _layer_norm(h + ffn @ sd[p + "fc2.weight"].T + sd[p + "fc2.bias"], sd, p + "final_layer_norm")
        outputs.append(h.reshape(steps, per_step * dim))
    return outputs


def max_relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


# ---------------------------------------------------------------------------------------------------------------
# Detection and reading
# ---------------------------------------------------------------------------------------------------------------


def test_detects_each_official_layout_by_content(tmp_path):
    ssast = tmp_path / "renamed.bin"  # the name says nothing: detection is by content
    torch.save(ssast_state_dict("frame"), ssast)
    mae = tmp_path / "model.pth"
    torch.save(mae_ast_checkpoint("frame"), mae)
    assert detect_format(read_checkpoint(ssast), ssast) == SSAST_FORMAT
    assert detect_format(read_checkpoint(mae), mae) == MAE_AST_FORMAT
    # SSAST saved without the DataParallel wrapper is accepted too
    bare = tmp_path / "bare.pth"
    torch.save(ssast_state_dict("patch", prefix=""), bare)
    assert detect_format(read_checkpoint(bare), bare) == SSAST_FORMAT


@pytest.mark.parametrize("content, found", [
    (b"", "an empty file"),
    (b"hello, I am a text file\n", "starting with bytes"),
])
def test_non_torch_files_are_refused_by_magic(tmp_path, content, found):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(MaebenchError, match=found) as err:
        load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_other_checkpoint_families_are_named_and_refused(tmp_path):
    # a wav2vec2/HuBERT-like fairseq file also has post_extract_proj, but none of MAE-AST's own keys
    wav2vec = {"cfg": {"model": {"_name": "wav2vec2"}}, "model": {
        "feature_extractor.conv_layers.0.0.weight": torch.zeros(4, 1, 10),
        "post_extract_proj.weight": torch.zeros(8, 4), "encoder.pos_conv.0.bias": torch.zeros(8)}}
    path = tmp_path / "wav2vec2.pt"
    torch.save(wav2vec, path)
    with pytest.raises(MaebenchError, match=r"not an SSAST .* or MAE-AST .*found a dict with keys cfg, model"):
        load(path)
    # an AST fine-tuned (not SSAST-pretrained) file has the ViT keys but no pretraining geometry
    ast = ssast_state_dict("patch")
    del ast["module.p_input_tdim"]
    path = tmp_path / "ast.pth"
    torch.save(ast, path)
    with pytest.raises(MaebenchError, match="missing key module.p_input_tdim"):
        load(path)
    # a tensor instead of a dict
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(MaebenchError, match="found a Tensor"):
        load(path)


def test_converters_name_a_checkpoint_of_the_other_family():
    with pytest.raises(MaebenchError, match=r"x\.pt is a MAE-AST fairseq \.pt checkpoint, not an SSAST \.pth one"):
        convert_ssast(mae_ast_checkpoint(), "x.pt")
    with pytest.raises(MaebenchError, match=r"x\.pth is an SSAST \.pth checkpoint, not a MAE-AST fairseq \.pt one"):
        convert_mae_ast(ssast_state_dict(), "x.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files_are_refused(tmp_path, legacy):
    path = tmp_path / "ssast.pth"
    torch.save(ssast_state_dict("frame"), path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaebenchError, match="truncated or corrupt") as err:
        load(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# The allow-list unpickler
# ---------------------------------------------------------------------------------------------------------------


class _Payload:
    """Pickles to os.system(...): what a malicious checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class _EvalPayload:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    ckpt = mae_ast_checkpoint("frame")
    ckpt["extra_state"] = {"hook": _Payload(f"touch {marker}")}
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(MaebenchError, match=r"refusing to load .*evil\.pt.*\(posix\.system\)"):
        load(path)
    assert not marker.exists()

    ckpt["extra_state"] = {"hook": _EvalPayload(f"open({str(marker)!r}, 'w')")}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(MaebenchError, match=r"refusing to load .*\(builtins\.eval\)"):
        load(path)
    assert not marker.exists()


def _fake_fairseq_choices(monkeypatch) -> type[enum.Enum]:
    """An enum pickled as fairseq.dataclass.constants.Choices, like fairseq's ChoiceEnum members in a cfg
    (fairseq itself is not installed; the module exists only while the checkpoint is written)."""
    choices = enum.Enum("Choices", {"chunk_mask": "chunk_mask", "random_mask": "random_mask"}, type=str,
                        module="fairseq.dataclass.constants", qualname="Choices")
    constants = types.ModuleType("fairseq.dataclass.constants")
    constants.Choices = choices
    for name, module in (("fairseq", types.ModuleType("fairseq")),
                         ("fairseq.dataclass", types.ModuleType("fairseq.dataclass")),
                         ("fairseq.dataclass.constants", constants)):
        monkeypatch.setitem(sys.modules, name, module)
    return choices


def test_fairseq_objects_load_through_the_allow_list(tmp_path, monkeypatch):
    """cfg holding an argparse Namespace and an enum, numpy metrics: loaded as inert data, never imported."""
    choices = _fake_fairseq_choices(monkeypatch)
    ckpt = mae_ast_checkpoint("patch", enc=1)
    ckpt["cfg"]["task"]["mask_type"] = choices.random_mask
    ckpt["args"] = argparse.Namespace(lr=[1e-4], arch="mae_ast")
    ckpt["extra_state"] = {"metrics": {"loss": np.float64(1.25)}, "best": np.arange(3)}
    path = tmp_path / "fairseq.pt"
    torch.save(ckpt, path)
    with pytest.raises(Exception):  # noqa: B017 - torch's own weights-only loader refuses these objects
        torch.load(path, weights_only=True)
    monkeypatch.delitem(sys.modules, "fairseq.dataclass.constants")  # loading must not need fairseq at all
    obj = read_checkpoint(path)
    assert plain(obj["cfg"]["task"]["mask_type"]) == "random_mask"
    assert plain(obj["args"]) == {"lr": [1e-4], "arch": "mae_ast"}
    model = load_official(path)
    assert model.config.mask_type == "random" and not model.config.shared_mask


def test_omegaconf_cfg_becomes_plain(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    ckpt = mae_ast_checkpoint("frame", enc=1)
    ckpt["cfg"] = omegaconf.OmegaConf.create(ckpt["cfg"])
    path = tmp_path / "omegaconf.pt"
    torch.save(ckpt, path)
    model = load(path)
    assert model.config.tokenizer == "frame" and model.config.depth == 1


# ---------------------------------------------------------------------------------------------------------------
# SSAST conversion
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["patch", "frame"])
def test_ssast_architecture_is_inferred_and_weights_renamed(tmp_path, tokenizer):
    sd = ssast_state_dict(tokenizer, dim=192, depth=3, tdim=256, seed=3)
    path = tmp_path / f"SSAST-Tiny-{tokenizer}.pth"
    torch.save(sd, path)
    model = load(path)
    cfg = model.config
    assert (cfg.tokenizer, cfg.dim, cfg.num_heads, cfg.depth, cfg.ffn_dim, cfg.target_frames) == (
        tokenizer, 192, 3, 3, 768, 256)
    assert (cfg.fshape, cfg.tshape) == TOKEN_SHAPES[tokenizer]
    # s3prl's fine-tuning geometry: patch stride 10 in both axes, frame time stride 1
    assert (cfg.fstride, cfg.tstride) == ((10, 10) if tokenizer == "patch" else (128, 1))
    assert model.downsample_rate == (1600 if tokenizer == "patch" else 160)
    assert not model.training
    ours = model.state_dict()
    assert torch.equal(ours["blocks.2.attn.qkv.weight"], sd["module.v.blocks.2.attn.qkv.weight"])
    assert torch.equal(ours["pos_embed"], sd["module.v.pos_embed"])
    assert torch.equal(ours["cpredlayer.2.bias"], sd["module.cpredlayer.2.bias"])
    assert torch.equal(ours["mask_embed"], sd["module.mask_embed"])
    assert len(ours) == len(sd) - 6  # everything but p_input_{f,t}dim and the two unused DeiT heads


def test_ssast_window_secs_option(tmp_path):
    path = tmp_path / "ssast_frame.pth"
    torch.save(ssast_state_dict("frame", depth=1), path)
    wav = torch.randn(1, 16000 * 3) * 0.1
    lens = torch.tensor([wav.shape[1]])
    default, longer = load(path), load(path, window_secs=2.0)
    assert default.config.window_secs == 1.0 and longer.config.window_secs == 2.0
    with torch.no_grad():
        a, b = default(wav, lens), longer(wav, lens)
    # frame geometry: 99 columns per 1 s window, 199 per 2 s window; 3 s of audio -> 3 x 99 vs 2 windows (trimmed)
    assert a.hidden_states[0].shape[1] == 297 and b.hidden_states[0].shape[1] == 300
    # the first window's opening frames see different context/positions: the features really differ
    assert not torch.allclose(a.hidden_states[0][:, :50], b.hidden_states[0][:, :50])
    with pytest.raises(MaebenchError, match="invalid SSAST option"):
        load(path, encoder_layers=3)


def test_ssast_bad_shapes_and_missing_keys_name_the_key(tmp_path):
    sd = ssast_state_dict("patch", depth=2)
    sd["module.v.blocks.1.mlp.fc1.weight"] = torch.zeros(100, 192)
    path = tmp_path / "shape.pth"
    torch.save(sd, path)
    with pytest.raises(MaebenchError, match=r"module\.v\.blocks\.1\.mlp\.fc1\.weight.*\(100, 192\).*\(768, 192\)"):
        load(path)
    sd = ssast_state_dict("patch", depth=2)
    del sd["module.v.blocks.1.attn.qkv.bias"]
    torch.save(sd, path)
    with pytest.raises(MaebenchError, match=r"missing key 'module\.v\.blocks\.1\.attn\.qkv\.bias'"):
        load(path)
    sd = ssast_state_dict("patch", depth=2)
    sd["module.v.pos_embed"] = sd["module.v.pos_embed"][:, :100]
    torch.save(sd, path)
    with pytest.raises(MaebenchError, match=r"module\.v\.pos_embed has 100 rows, expected 130"):
        load(path)
    sd = ssast_state_dict("patch", depth=2)
    sd["module.v.extra_adapter.weight"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(MaebenchError, match=r"unexpected key 'module\.v\.extra_adapter\.weight'"):
        load(path)


# ---------------------------------------------------------------------------------------------------------------
# MAE-AST conversion
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer, fp16", [("patch", False), ("frame", True)])
def test_mae_ast_matches_a_float64_reference_of_the_fairseq_weights(tmp_path, tokenizer, fp16):
    ckpt = mae_ast_checkpoint(tokenizer, dim=64, heads=4, ffn=96, enc=3, dec=1, fp16=fp16, seed=5)
    path = tmp_path / "mae_ast.pt"
    torch.save(ckpt, path)
    model = load(path)
    assert (model.config.tokenizer, model.config.dim, model.config.depth, model.config.decoder_depth) == (
        tokenizer, 64, 3, 1)
    assert model.config.mask_type == "chunk" and model.config.shared_mask  # chunk_mask: one mask per batch
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 files are upcast
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(24000, generator=g) * 0.1
    with torch.no_grad():
        feats = model(wav[None], torch.tensor([24000]))
    reference = reference_mae_ast(ckpt, wav)
    assert len(feats.hidden_states) == len(reference) == 3
    for ours, ref in zip(feats.hidden_states, reference, strict=True):
        assert ours.shape[1:] == ref.shape
        assert max_relative(ours[0], ref) < 1e-4


def test_mae_ast_qkv_is_fused_in_q_k_v_order(tmp_path):
    ckpt = mae_ast_checkpoint("frame", enc=1, dec=1)
    path = tmp_path / "mae.pt"
    torch.save(ckpt, path)
    sd = load(path).state_dict()
    m = ckpt["model"]
    expected = torch.cat([m[f"encoder.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(sd["encoder.0.attn.qkv.weight"], expected)
    assert torch.equal(sd["decoder.0.attn.proj.bias"], m["decoder.layers.0.self_attn.out_proj.bias"])
    assert torch.equal(sd["decoder_mask_token"], m["decoder_mask_emb"])
    assert torch.equal(sd["batch_norm.running_var"], m["batch_norm.running_var"])


def test_mae_ast_errors_name_the_key(tmp_path):
    path = tmp_path / "mae.pt"
    ckpt = mae_ast_checkpoint("patch", enc=2)
    del ckpt["model"]["encoder.layers.1.self_attn.k_proj.weight"]
    torch.save(ckpt, path)
    with pytest.raises(MaebenchError, match=r"missing key 'encoder\.layers\.1\.self_attn\.k_proj\.weight'"):
        load(path)
    ckpt = mae_ast_checkpoint("patch", enc=2)
    ckpt["model"]["encoder.layers.0.fc2.weight"] = torch.zeros(64, 100)
    torch.save(ckpt, path)
    with pytest.raises(MaebenchError, match=r"'encoder\.layers\.0\.fc2\.weight' has shape \(64, 100\)"):
        load(path)
    ckpt = mae_ast_checkpoint("patch", enc=2)
    ckpt["cfg"]["model"]["encoder_layers"] = 3
    torch.save(ckpt, path)
    with pytest.raises(MaebenchError, match="encoder_layers=3 but the weights have 2 encoder layers"):
        load(path)
    ckpt = mae_ast_checkpoint("patch", enc=2)
    ckpt["cfg"]["model"]["enc_conv_pos"] = True
    torch.save(ckpt, path)
    with pytest.raises(MaebenchError, match="enc_conv_pos=True is not supported"):
        load(path)
    ckpt = mae_ast_checkpoint("patch", enc=2)
    del ckpt["cfg"]["model"]["encoder_embed_dim"]
    torch.save(ckpt, path)
    with pytest.raises(MaebenchError, match="missing key 'cfg.model.encoder_embed_dim'"):
        load(path)


# ---------------------------------------------------------------------------------------------------------------
# maebench convert
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ssast", "mae_ast"])
def test_convert_writes_native_format_with_identical_outputs(tmp_path, capsys, kind):
    src = tmp_path / ("SSAST-Tiny-Patch-400.pth" if kind == "ssast" else "chunk_patch.pt")
    torch.save(ssast_state_dict("patch", depth=2) if kind == "ssast" else mae_ast_checkpoint("patch", enc=2), src)
    dst = tmp_path / "native"
    assert cli_main(["convert", str(src), str(dst)]) == 0
    meta = json.loads((dst / "config.json").read_text())
    assert meta["family"] == kind
    assert meta["provenance"]["source"] == str(src.resolve())
    assert meta["provenance"]["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    wav = torch.randn(2, 20000) * 0.1
    lens = torch.tensor([20000, 15000])
    with torch.no_grad():
        a, b = load(src)(wav, lens), load(dst)(wav, lens)
    assert torch.equal(a.lens, b.lens)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)


def test_convert_reports_bad_input_as_one_line(tmp_path, capsys):
    src = tmp_path / "broken.pt"
    src.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maebench: error:") and str(src) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_convert_never_replaces_an_existing_destination_silently(tmp_path, capsys):
    src = tmp_path / "SSAST-Tiny-Patch-400.pth"
    torch.save(ssast_state_dict("patch", depth=2), src)
    dst = tmp_path / "native"
    assert cli_main(["convert", str(src), str(dst)]) == 0
    before = (dst / "model.safetensors").stat().st_mtime_ns
    assert cli_main(["convert", str(src), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (dst / "model.safetensors").stat().st_mtime_ns == before
    assert cli_main(["convert", str(src), str(dst), "--overwrite"]) == 0


# ---------------------------------------------------------------------------------------------------------------
# The allow-list unpickler never changes shared objects (issue 14, item 4)
# ---------------------------------------------------------------------------------------------------------------

def _state_payload(module: str, name: str, attribute: str, value: bytes) -> bytes:
    """A protocol-2 pickle, written opcode by opcode: GLOBAL module.name, then BUILD with the slot state
    {attribute: value}, which plain pickle applies with setattr on the global itself (a class or a function)."""
    key = attribute.encode()
    return (b"\x80\x02" + f"c{module}\n{name}\n".encode() + b"N}" + b"X" + len(key).to_bytes(4, "little") + key
            + value + b"s\x86b.")


def test_build_on_an_allow_listed_class_is_refused_and_changes_nothing(tmp_path):
    """collections.Counter is allow-listed (torch's own list); a BUILD on the class itself would rebind
    Counter.most_common in the loading process. It must be refused before anything changes."""
    import collections

    original = collections.Counter.most_common
    path = tmp_path / "evil.pt"
    path.write_bytes(_state_payload("collections", "Counter", "most_common", b"c__builtin__\nlist\n"))
    assert len(path.read_bytes()) < 130
    with pytest.raises(MaebenchError) as excinfo:
        read_checkpoint(path)
    message = str(excinfo.value)
    assert "\n" not in message and "refusing to load" in message and "BUILD on collections.Counter" in message
    assert collections.Counter.most_common is original
    assert collections.Counter("abca").most_common(1) == [("a", 2)]


def test_build_on_an_allow_listed_function_is_refused(tmp_path):
    """Functions carry writable state too (__defaults__, __kwdefaults__): never set from a file."""
    rebuild = torch._utils._rebuild_parameter
    before = (rebuild.__defaults__, dict(rebuild.__dict__))
    path = tmp_path / "evil.pt"
    path.write_bytes(_state_payload("torch._utils", "_rebuild_parameter", "__defaults__", b")"))
    with pytest.raises(MaebenchError, match="refusing to load .*BUILD on torch._utils._rebuild_parameter"):
        read_checkpoint(path)
    assert (rebuild.__defaults__, dict(rebuild.__dict__)) == before


def test_setitem_on_a_class_is_refused(tmp_path):
    """SETITEM / SETITEMS only ever fill containers the load made, as in torch's weights_only unpickler."""
    path = tmp_path / "evil.pt"
    path.write_bytes(b"\x80\x02ccollections\nOrderedDict\n(X\x01\x00\x00\x00aK\x01u.")
    with pytest.raises(MaebenchError, match="refusing to load .*SETITEMS on collections.OrderedDict"):
        read_checkpoint(path)
