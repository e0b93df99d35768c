"""SSAST (Gong et al., AAAI 2022): a DeiT-style ViT pretrained by masked patch modelling, as an Upstream.

Pretraining (`pretrain_loss`) follows the public SSAST code: the fbank is padded or cut to `target_frames`,
normalised with dataset statistics, cut into non-overlapping patches, and masked tokens are replaced by a learned
`mask_embed` *inside* the full sequence (unlike MAE-AST, the encoder sees every position). A discriminative head
(`cpredlayer`, InfoNCE) and a generative head (`gpredlayer`, MSE) predict the masked input patches.

Feature extraction (`forward`) reproduces s3prl's `ssast_patch_base` / `ssast_frame_base` upstreams: audio is
cut into `window_secs` windows, each run with the overlapping fine-tuning geometry (patch stride 10, or frame
time stride 1) and a positional table adapted from the pretraining grid; the outputs are concatenated in time.

Fine-tuning as SSAST's authors do it (`use_global_input`): the whole clip is ONE input of `target_frames` frames
with global attention and a positional table fitted once to that grid (YuanGongND/ssast src/models/ast_models.py,
ASTModel(pretrain_stage=False) lines 139-204; src/dataloader.py `_wav2fbank` / `__getitem__`; the superb upstream
src/finetune/superb/upstream/ast/audio.py + expert.py for KS1 / SID / ER).

Parameter names equal the official checkpoint keys without their `module.v.` / `module.` prefixes, so converting
an official `.pth` file is a rename.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.errors import MaebenchError

from .blocks import Block
from .frontend import SAMPLE_RATE, SSAST_FBANK, FbankConfig, fbank_batch, frames_to_samples
from .interface import Features, PretrainOutput, Upstream
from .masking import CHUNK_STYLES, CHUNK_TRIMS, chunk_mask, gather_tokens, random_mask, split_indices
from .vocabulary import config_from_dict

__all__ = ["GlobalInput", "Ssast", "SsastConfig", "adapt_pos_embed"]

FRAME_SHIFT = SSAST_FBANK.window_shift  # samples per fbank frame (160: 10 ms)
NUM_MEL_BINS = 128
NUM_PREFIX_TOKENS = 2  # DeiT's cls and dist tokens
# The published models mask 400 of the 512 tokens of a 1024-frame clip; other grids keep this fraction.
PUBLISHED_MASKED, PUBLISHED_TOKENS = 400, 512
# s3prl's feature extractor: the same hanning/htk fbank but without subtracting the waveform mean (which the
# per-frame DC removal makes irrelevant up to rounding; dropping it keeps the features bit-for-bit comparable).
FEATURE_FBANK = dataclasses.replace(SSAST_FBANK, remove_mean=False)

_TOKENIZERS: dict[str, dict[str, Any]] = {
    # patch: 16x16 patches, pretrained without overlap; features use stride 10 in both axes (12 x T/10 tokens)
    "patch": {"fshape": 16, "tshape": 16, "fstride": 10, "tstride": 10, "mask_type": "chunk"},
    # frame: 128x2 patches (whole spectrum, 2 frames); features use time stride 1
    "frame": {"fshape": 128, "tshape": 2, "fstride": 128, "tstride": 1, "mask_type": "random"},
}
_MASK_TYPES = ("chunk", "random")  # chunk = the SSAST paper's cluster masking
_PRETRAIN_MODES = ("two_pass", "one_pass")
# InfoNCE over the clip's masked tokens: "code" log-softmaxes each target's scores over the predictions, as the
# authors' code does (ast_models.py `mpc`: lsoftmax(encode_samples @ pred^T), see ssast issue #13); "paper" each
# prediction's scores over the targets (the paper's eq. 1).
NCE_ORIENTATIONS = ("code", "paper")


@dataclass
class SsastConfig:
    """Architecture, pretraining task and feature geometry of one SSAST model.

    Fields left as None take the tokenizer's published value in `__post_init__`, so `to_config` always records
    concrete numbers. `num_masked` defaults to round(tokens * 400 / 512): 400 for the published 1024-frame grid,
    the same masked fraction (78%) for any other `target_frames`. Field names are the vocabulary shared with
    MaeAstConfig (see `maebench.upstream.vocabulary`).
    """

    tokenizer: str = "patch"  # "patch" (16x16) | "frame" (128x2)
    dim: int = 768
    num_heads: int = 12
    ffn_dim: int | None = None  # 4 * dim
    depth: int = 12  # encoder blocks
    fshape: int | None = None  # patch height in mel bins
    tshape: int | None = None  # patch width in frames
    target_frames: int = 1024  # pretraining input length: fbank padded / cut to this many frames
    num_masked: int | None = None
    mask_type: str | None = None  # "chunk" (patch default: the paper's clusters) | "random" (frame default)
    mask_min_side: int = 3  # chunk (cluster) sides, in tokens
    mask_max_side: int = 5
    # chunk masks as the authors' gen_maskid_patch draws them: one side per clip, wrapping across rows, never token
    # 0 ("ssast"), the lowest covered indices kept ("lowest"); see masking.chunk_mask for the other styles
    mask_chunk_style: str = "ssast"
    mask_trim: str = "lowest"
    nce_orientation: str = "code"  # see NCE_ORIENTATIONS
    pretrain_mode: str = "two_pass"  # "two_pass" (published) | "one_pass"
    norm_mean: float = -4.2677393  # AudioSet + LibriSpeech fbank statistics
    norm_std: float = 4.5689974
    fstride: int | None = None  # feature-extraction patch strides (fine-tuning geometry)
    tstride: int | None = None
    window_secs: float = 1.0  # feature-extraction window

    def __post_init__(self) -> None:
        if self.tokenizer not in _TOKENIZERS:
            raise MaebenchError(f"SSAST tokenizer {self.tokenizer!r} is not one of {', '.join(_TOKENIZERS)}")
        for name, value in _TOKENIZERS[self.tokenizer].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.dim
        for name in ("dim", "num_heads", "ffn_dim", "depth", "fshape", "tshape", "fstride", "tstride"):
            if int(getattr(self, name)) < 1:
                raise MaebenchError(f"SSAST {name}={getattr(self, name)} must be a positive integer")
        if self.dim % self.num_heads:
            raise MaebenchError(f"SSAST dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if not 1 <= self.fshape <= NUM_MEL_BINS:
            raise MaebenchError(f"SSAST fshape={self.fshape} must be between 1 and {NUM_MEL_BINS} mel bins")
        if self.mask_type not in _MASK_TYPES:
            raise MaebenchError(f"SSAST mask_type {self.mask_type!r} is not one of {', '.join(_MASK_TYPES)}")
        for name, allowed in (("mask_chunk_style", CHUNK_STYLES), ("mask_trim", CHUNK_TRIMS),
                              ("nce_orientation", NCE_ORIENTATIONS)):
            if getattr(self, name) not in allowed:
                raise MaebenchError(f"SSAST {name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.pretrain_mode not in _PRETRAIN_MODES:
            raise MaebenchError(
                f"SSAST pretrain_mode {self.pretrain_mode!r} is not one of {', '.join(_PRETRAIN_MODES)}"
            )
        if self.target_frames < self.tshape:
            raise MaebenchError(
                f"SSAST target_frames={self.target_frames} is shorter than one patch ({self.tshape} frames)"
            )
        tokens = self.num_tokens
        if self.num_masked is None:
            self.num_masked = max(1, round(tokens * PUBLISHED_MASKED / PUBLISHED_TOKENS))
        if not 1 <= self.num_masked <= tokens:
            raise MaebenchError(f"SSAST num_masked={self.num_masked} must be between 1 and the {tokens} tokens")
        if not 1 <= self.mask_min_side <= self.mask_max_side:
            raise MaebenchError(
                f"SSAST mask sides {self.mask_min_side}..{self.mask_max_side} must satisfy 1 <= min <= max"
            )
        if self.norm_std <= 0:
            raise MaebenchError(f"SSAST norm_std={self.norm_std} must be positive")
        if self.window_frames < self.tshape or self.window_samples < 1:
            raise MaebenchError(
                f"SSAST window_secs={self.window_secs} is shorter than one patch ({self.tshape} frames); "
                f"use at least {self.tshape * FRAME_SHIFT / SAMPLE_RATE:g} s"
            )

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SsastConfig:
        """From a dict in the current or the 0.1.0 names; unknown fields -> MaebenchError."""
        return config_from_dict(cls, "ssast", config)

    # ---- pretraining geometry (non-overlapping patches over target_frames)
    @property
    def pretrain_grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of the pretraining token grid: (8, 64) / (1, 512) for 1024 frames."""
        return NUM_MEL_BINS // self.fshape, self.target_frames // self.tshape

    @property
    def num_tokens(self) -> int:
        rows, cols = self.pretrain_grid
        return rows * cols

    @property
    def patch_values(self) -> int:
        """Values per patch (256 for both tokenizers): the prediction heads' output size."""
        return self.fshape * self.tshape

    # ---- feature geometry (overlapping patches over one window), as s3prl computes it
    @property
    def window_samples(self) -> int:
        return int(self.window_secs * SAMPLE_RATE)

    @property
    def window_frames(self) -> int:
        """Frames per window after padding: s3prl's target_length (100 for 1 s)."""
        return int(self.window_secs * SAMPLE_RATE / FRAME_SHIFT)

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) per window: (12, 9) for patch and (1, 99) for frame at 1 s."""
        rows = (NUM_MEL_BINS - self.fshape) // self.fstride + 1
        cols = (self.window_frames - self.tshape) // self.tstride + 1
        return rows, cols


@dataclass(frozen=True)
class GlobalInput:
    """SSAST's own fine-tuning input: the whole clip as ONE (128, target_frames) spectrogram, global attention.

    Two variants in the reference code:
    - `normalise_padding=True` (src/dataloader.py, AS / ESC-50 / KS2): fbank of the mean-removed waveform, zero-pad
      or cut to target_length, SpecAugment, then `(x - mean) / (2 * std)` with the task's statistics (padding frames
      become -mean / (2 * std)), then noise; ft_avgtok averages every token of the grid.
    - `normalise_padding=False` (superb upstream ast/audio.py, KS1 / SID / ER): no mean removal, normalise with the
      AudioSet statistics, then zero-pad (padding stays exactly 0) or cut to 1 / 6 / 10 s.
    layout "frames": (B, time columns, rows * D) per layer; "tokens": (B, columns * rows, D), time-major, 768-wide
    tokens as the superb upstream hands them to s3prl.
    """

    target_frames: int
    norm_mean: float
    norm_std: float
    normalise_padding: bool = True
    layout: str = "frames"

    def __post_init__(self) -> None:
        if self.target_frames < 1 or self.norm_std <= 0:
            raise MaebenchError(f"SSAST global input: target_frames={self.target_frames} must be >= 1 and "
                                f"norm_std={self.norm_std} positive")
        if self.layout not in ("frames", "tokens"):
            raise MaebenchError(f"SSAST global input layout {self.layout!r} is not 'frames' or 'tokens'")


def adapt_pos_embed(
    pos_embed: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], num_prefix: int = NUM_PREFIX_TOKENS
) -> Tensor:
    """Carry a (1, prefix + rows*cols, D) positional table from the pretraining grid to another grid.

    As in SSAST fine-tuning: the prefix (cls/dist) rows are kept; the patch part is centre-cropped in time when
    the new grid is shorter, else bilinearly resized in time; then the same in frequency. (The official code
    resizes time to a hard-coded 8 rows and crops frequency with the time length; for the patch and frame
    geometries this gives the same table up to float rounding, so the general form is used here.)
    """
    (src_rows, src_cols), (rows, cols) = src_grid, dst_grid
    dim = pos_embed.shape[-1]
    prefix = pos_embed[:, :num_prefix]
    grid = pos_embed[:, num_prefix:].transpose(1, 2).reshape(1, dim, src_rows, src_cols)
    if cols < src_cols:
        start = src_cols // 2 - cols // 2
        grid = grid[:, :, :, start : start + cols]
    else:
        grid = F.interpolate(grid, size=(src_rows, cols), mode="bilinear", align_corners=False)
    if rows < src_rows:
        start = src_rows // 2 - rows // 2
        grid = grid[:, :, start : start + rows, :]
    else:
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
    return torch.cat([prefix, grid.reshape(1, dim, rows * cols).transpose(1, 2)], dim=1)


class PatchEmbed(nn.Module):
    """Conv2d patch embedding of a (B, 1, mel, frames) spectrogram into frequency-major tokens (B, rows*cols, D).

    The pretraining stride equals the patch shape; feature extraction reuses the same kernel with a smaller
    stride (overlapping patches), as SSAST fine-tuning does.
    """

    def __init__(self, dim: int, fshape: int, tshape: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=(fshape, tshape), stride=(fshape, tshape))

    def forward(self, spec: Tensor, stride: tuple[int, int] | None = None) -> Tensor:
        out = F.conv2d(spec, self.proj.weight, self.proj.bias, stride=stride or self.proj.stride)
        return out.flatten(2).transpose(1, 2)


def _prediction_head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


def info_nce(pred: Tensor, target: Tensor, orientation: str = "code") -> tuple[Tensor, Tensor]:
    """(loss, accuracy) of InfoNCE within each clip, logits = pred @ target^T (B, M, M).

    orientation "code" (the authors' code): loss = -mean(diag(log_softmax(logits, over predictions))), each patch
    must pick its own prediction; "paper" (eq. 1): over targets, each prediction must pick its own patch.
    accuracy = share of predictions whose best-scoring patch is their own (the public code's `acc`, either way).
    """
    logits = torch.bmm(pred.float(), target.float().transpose(1, 2))
    own = torch.arange(logits.shape[-1], device=logits.device)
    over = -2 if orientation == "code" else -1
    loss = -logits.log_softmax(dim=over).diagonal(dim1=1, dim2=2).mean()
    acc = (logits.argmax(dim=-1) == own).float().mean()
    return loss, acc


class Ssast(Upstream):
    """SSAST encoder with its pretraining heads; `forward` gives s3prl-layout per-layer features."""

    family = "ssast"
    # The pretraining filterbank, recorded in checkpoints; features use FEATURE_FBANK (same but for remove_mean,
    # which changes nothing but rounding).
    frontend: FbankConfig = SSAST_FBANK

    def __init__(self, config: SsastConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SsastConfig()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PREFIX_TOKENS + cfg.num_tokens, cfg.dim))
        self.patch_embed = PatchEmbed(cfg.dim, cfg.fshape, cfg.tshape)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.num_heads, cfg.ffn_dim, norm_first=True, eps=1e-6) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.cpredlayer = _prediction_head(cfg.dim, cfg.patch_values)
        self.gpredlayer = _prediction_head(cfg.dim, cfg.patch_values)
        self._init_weights()

        rows, _ = cfg.feature_grid
        self.hidden_size = rows * cfg.dim
        self.num_layers = cfg.depth
        self.downsample_rate = FRAME_SHIFT * cfg.tstride
        # SSAST's fine-tuning input (see `use_global_input`); None = s3prl's windowed features
        self.global_input: GlobalInput | None = None
        self.register_parameter("global_pos_embed", None)

    def _init_weights(self) -> None:
        """timm DeiT initialisation for the ViT; PyTorch defaults for the patch conv and heads (added after timm's
        init in the public code); Xavier-normal mask embedding."""
        for param in (self.pos_embed, self.cls_token, self.dist_token):
            nn.init.trunc_normal_(param, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.xavier_normal_(self.mask_embed)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Ssast:
        """Build from a `to_config()` dict (a `family` entry, if present, must be "ssast")."""
        config = dict(config)
        family = config.pop("family", cls.family)
        if family != cls.family:
            raise MaebenchError(f"config family {family!r} is not {cls.family!r}; load it with its own model class")
        return cls(SsastConfig.from_dict(config))

    def to_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    # ------------------------------------------------------------------ shared pieces
    def _normalise(self, fbank: Tensor) -> Tensor:
        return (fbank - self.config.norm_mean) / (2.0 * self.config.norm_std)

    def _augment(self, fbank: Tensor) -> Tensor:
        if self.training and self.fbank_augment is not None:
            return self.fbank_augment(fbank)
        return fbank

    def _with_prefix(self, tokens: Tensor, pos_embed: Tensor) -> Tensor:
        batch = tokens.shape[0]
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1).expand(batch, -1, -1)
        return torch.cat([prefix.to(tokens.dtype), tokens], dim=1) + pos_embed

    # ------------------------------------------------------------------ pretraining
    def pretrain_input(self, wavs: Tensor, lens: Tensor) -> Tensor:
        """Normalised (B, 1, 128, target_frames) spectrogram, as the SSAST data loader makes it.

        Order as in the public code: fbank (waveform mean removed), zero-pad or cut (from the start) to
        target_frames, then normalise, so padding frames become (0 - mean) / (2 * std).
        """
        device = self.pos_embed.device
        fbank, _ = fbank_batch(wavs.to(device), lens.to(device), SSAST_FBANK)
        fbank = self._augment(fbank)
        target = self.config.target_frames
        if fbank.shape[1] < target:
            fbank = F.pad(fbank, (0, 0, 0, target - fbank.shape[1]))
        fbank = self._normalise(fbank[:, :target])
        return fbank.transpose(1, 2).unsqueeze(1)

    def patchify(self, spec: Tensor) -> Tensor:
        """(B, 1, 128, T) -> (B, tokens, fshape * tshape): the prediction targets, frequency-major tokens, each
        patch flattened (frequency, time) like the Conv2d kernel and `nn.Unfold` see it."""
        cfg = self.config
        rows, cols = cfg.pretrain_grid
        spec = spec[:, 0, : rows * cfg.fshape, : cols * cfg.tshape]
        patches = spec.reshape(spec.shape[0], rows, cfg.fshape, cols, cfg.tshape).permute(0, 1, 3, 2, 4)
        return patches.reshape(spec.shape[0], rows * cols, cfg.patch_values)

    def sample_mask(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """(B, tokens) bool, exactly `num_masked` True per row, drawn independently per clip.

        chunk (the paper's cluster masking): chunks (side mask_min_side..mask_max_side) on the (frequency, time)
        token grid, drawn as `mask_chunk_style` and cut to the count as `mask_trim` say (by default as the public
        code: one side per clip, wrapping across frequency rows, never token 0, the lowest covered indices kept);
        random: uniform.
        """
        cfg = self.config
        device = self.pos_embed.device
        if cfg.mask_type == "chunk":
            return chunk_mask(
                batch, cfg.pretrain_grid, cfg.num_masked, min_side=cfg.mask_min_side, max_side=cfg.mask_max_side,
                style=cfg.mask_chunk_style, trim=cfg.mask_trim, device=device, generator=generator,
            )
        return random_mask(batch, cfg.num_tokens, cfg.num_masked, device=device, generator=generator)

    def encode(self, spec: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pretraining-geometry encoder: (B, 1, 128, target_frames) -> (B, 2 + tokens, D) after the final norm.

        Tokens where `mask` (B, tokens) is True are replaced by `mask_embed` before positions are added, so the
        encoder never sees their content.
        """
        tokens = self.patch_embed(spec)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)
        x = self._with_prefix(tokens, self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _masked_outputs(self, spec: Tensor, mask: Tensor, num_masked: int | None) -> tuple[Tensor, Tensor]:
        """(encoder outputs at the masked tokens (B, M, D), their indices (B, M)); `num_masked` as in
        `split_indices` (known for drawn masks, None = check a given one)."""
        _, masked_idx = split_indices(mask, num_masked)
        hidden = self.encode(spec, mask)[:, NUM_PREFIX_TOKENS:]
        return gather_tokens(hidden, masked_idx), masked_idx

    def pretrain_loss(self, wavs: Tensor, lens: Tensor, *, mask: Tensor | None = None) -> PretrainOutput:
        """loss = InfoNCE + 10 * MSE on masked patches of a padded batch of waveforms.

        two_pass (published): the discriminative and generative objectives each get their own encoder pass with
        an independent mask. one_pass: one mask and one pass, both heads on the same masked tokens. `mask`
        (B, tokens) bool overrides the random masks of every pass (tests, analysis).
        """
        return self.spectrogram_loss(self.pretrain_input(wavs, lens), mask=mask)

    def spectrogram_loss(self, spec: Tensor, *, mask: Tensor | None = None) -> PretrainOutput:
        """The pretraining loss from a normalised (B, 1, 128, target_frames) spectrogram (see `pretrain_loss`)."""
        patches = self.patchify(spec)
        batch = spec.shape[0]
        count = self.config.num_masked if mask is None else None
        nce_mask = self.sample_mask(batch) if mask is None else mask.to(spec.device)
        nce_hidden, nce_idx = self._masked_outputs(spec, nce_mask, count)
        if self.config.pretrain_mode == "two_pass":
            mse_mask = self.sample_mask(batch) if mask is None else nce_mask
            mse_hidden, mse_idx = self._masked_outputs(spec, mse_mask, count)
        else:
            mse_hidden, mse_idx = nce_hidden, nce_idx
        with torch.autocast(device_type=spec.device.type, enabled=False):
            nce, acc = info_nce(self.cpredlayer(nce_hidden.float()), gather_tokens(patches, nce_idx),
                                self.config.nce_orientation)
            recon = self.gpredlayer(mse_hidden.float())
            mse = F.mse_loss(recon, gather_tokens(patches, mse_idx).float())
        loss = nce + 10.0 * mse
        stats = {"nce": nce.detach(), "mse": mse.detach(), "nce_acc": acc.detach()}
        return PretrainOutput(loss=loss, stats=stats)

    def pretrain_flops(self, num_samples: int) -> float:
        """Model FLOPs (multiply-add = 2) of one training step per clip: forward + backward = 3 x forward.

        The input is always padded or cut to target_frames, so the cost does not depend on `num_samples`.
        two_pass runs the encoder twice (once per objective); the fbank is not counted.
        """
        del num_samples
        cfg = self.config
        tokens, masked, values, dim = cfg.num_tokens, cfg.num_masked, cfg.patch_values, cfg.dim
        seq = NUM_PREFIX_TOKENS + tokens
        attention = 2 * seq * dim * 3 * dim + 2 * 2 * seq * seq * dim + 2 * seq * dim * dim  # qkv, scores/mix, proj
        per_block = attention + 2 * 2 * seq * dim * cfg.ffn_dim
        encoder = 2 * tokens * values * dim + cfg.depth * per_block
        head = 2 * masked * (dim * dim + dim * values)
        nce = 2 * masked * masked * values
        passes = 2 if cfg.pretrain_mode == "two_pass" else 1
        return float(3 * (passes * encoder + 2 * head + nce))

    # ------------------------------------------------------------------ feature extraction
    def min_input_samples(self) -> int:
        """One whole patch column: tshape fbank frames (2800 samples for patch, 560 for frame tokens)."""
        return frames_to_samples(self.config.tshape, FEATURE_FBANK)

    def output_lens(self, lens: Tensor) -> Tensor:
        """Valid frames for `lens` samples: ceil(len / downsample_rate), but at most the tokens its windows give
        (s3prl's trimming: 9 tokens per 1 s patch window, not 10)."""
        lens = torch.as_tensor(lens).long()
        _, cols = self.config.feature_grid
        windows = torch.div(lens + self.config.window_samples - 1, self.config.window_samples, rounding_mode="floor")
        frames = torch.div(lens + self.downsample_rate - 1, self.downsample_rate, rounding_mode="floor")
        return torch.minimum(frames, windows.clamp(min=1) * cols).clamp(min=1)

    def feature_pos_embed(self) -> Tensor:
        """The positional table for the feature geometry, derived from the (trainable) pretraining table."""
        return adapt_pos_embed(self.pos_embed, self.config.pretrain_grid, self.config.feature_grid)

    # ------------------------------------------------------------------ SSAST's own fine-tuning input
    def global_grid(self, target_frames: int) -> tuple[int, int]:
        """(frequency rows, time columns) of one target_frames input at the fine-tuning strides: (12, 50) for a
        patch model at 512 frames, (1, 511) for a frame model (ASTModel.get_shape)."""
        cfg = self.config
        return (NUM_MEL_BINS - cfg.fshape) // cfg.fstride + 1, (target_frames - cfg.tshape) // cfg.tstride + 1

    def use_global_input(self, spec: GlobalInput | None) -> None:
        """Switch `forward` to SSAST's fine-tuning input (None: back to s3prl windows).

        As ASTModel(pretrain_stage=False) does once at construction (ast_models.py lines 192-204), the pretraining
        positional table is cropped / resized to the new grid and becomes a parameter of its own
        (`global_pos_embed`), trained directly from then on. Call before building the optimiser.
        """
        self.global_input = spec
        if spec is None:
            self.global_pos_embed = None
            return
        if spec.target_frames < self.config.tshape:
            raise MaebenchError(f"SSAST target_frames={spec.target_frames} is shorter than one patch "
                                f"({self.config.tshape} frames)")
        with torch.no_grad():
            table = adapt_pos_embed(self.pos_embed, self.config.pretrain_grid, self.global_grid(spec.target_frames))
        self.global_pos_embed = nn.Parameter(table.clone())

    def _global_input(self, wavs: Tensor, lens: Tensor, spec: GlobalInput) -> tuple[Tensor, Tensor]:
        """(normalised (B, target_frames, 128) input, valid frames (B,)) in the reference's order (class doc)."""
        fbank, frame_lens = fbank_batch(wavs, lens, SSAST_FBANK if spec.normalise_padding else FEATURE_FBANK)
        target = spec.target_frames
        if fbank.shape[1] < target:  # fbank_batch already zeroes each item's frames past its end
            fbank = F.pad(fbank, (0, 0, 0, target - fbank.shape[1]))
        fbank = self._augment(fbank[:, :target])
        x = (fbank - spec.norm_mean) / (2.0 * spec.norm_std)
        if not spec.normalise_padding:  # superb upstream: normalise the clip, then pad with exact zeros
            x = x * (torch.arange(target, device=x.device)[None, :] < frame_lens[:, None])[..., None].to(x.dtype)
        if self.training and self.input_augment is not None:  # dataloader.py: noise after normalising
            x = self.input_augment(x)
        return x, frame_lens.clamp(max=target)

    def _global_forward(self, wavs: Tensor, lens: Tensor) -> Features:
        """SSAST fine-tuning forward (ASTModel.finetuningavgtok up to the pooling): hidden_states = block outputs
        before `v.norm`, last_hidden_state = `v.norm` output over the whole grid (padding included, as ft_avgtok
        averages it); lens = time columns that start inside the clip (times rows in the tokens layout)."""
        spec, cfg = self.global_input, self.config
        assert spec is not None and self.global_pos_embed is not None
        device = self.pos_embed.device
        wavs, lens = wavs.to(device), torch.as_tensor(lens, device=device).long()
        x, frame_lens = self._global_input(wavs.float(), lens, spec)
        rows, cols = self.global_grid(spec.target_frames)
        tokens = self.patch_embed(x.transpose(1, 2).unsqueeze(1), stride=(cfg.fstride, cfg.tstride))
        h = self._with_prefix(tokens, self.global_pos_embed)

        def layout(out: Tensor) -> Tensor:  # frequency-major tokens -> time-major frames or tokens
            grid = out[:, NUM_PREFIX_TOKENS:].reshape(out.shape[0], rows, cols, cfg.dim).transpose(1, 2)
            shape = (cols, rows * cfg.dim) if spec.layout == "frames" else (cols * rows, cfg.dim)
            return grid.reshape(out.shape[0], *shape).float()

        hidden_states = []
        for block in self.blocks:
            h = block(h)
            hidden_states.append(layout(h))
        valid = torch.div(frame_lens + cfg.tstride - 1, cfg.tstride, rounding_mode="floor").clamp(1, cols)
        if spec.layout == "tokens":
            valid = valid * rows
        return Features(hidden_states=hidden_states, lens=valid, last_hidden_state=layout(self.norm(h)))

    def forward(self, wavs: Tensor, lens: Tensor) -> Features:
        """Per-layer features: 12 block outputs before the final norm, (B, T, rows * D), windows joined in time.

        Each item is zero-padded past its length, cut into windows of window_samples, and every window gets its
        own fbank (no mean removal), normalisation and zero padding to window_frames, as in s3prl. Windows of all
        items run as one batch; frames past an item's `output_lens` come from silence and are padding.
        With `use_global_input`, SSAST's fine-tuning input instead (`_global_forward`).
        """
        if self.global_input is not None:
            return self._global_forward(wavs, lens)
        cfg = self.config
        device = self.pos_embed.device
        wavs, lens = wavs.to(device), torch.as_tensor(lens, device=device).long()
        batch, width = wavs.shape
        out_lens = self.output_lens(lens)
        max_len = int(lens.max()) if batch else 0
        num_windows = max(1, math.ceil(max_len / cfg.window_samples))
        span = num_windows * cfg.window_samples
        wavs = torch.where(torch.arange(width, device=device) < lens[:, None], wavs, 0).float()
        wavs = F.pad(wavs, (0, span - width)) if width < span else wavs[:, :span]
        windows = wavs.reshape(batch * num_windows, cfg.window_samples)

        full = torch.full((windows.shape[0],), cfg.window_samples, device=device, dtype=torch.long)
        fbank, _ = fbank_batch(windows, full, FEATURE_FBANK)
        per_window = fbank.shape[1]
        # SpecAugment masks the clip (as SSAST's fine-tuning does), not each 1 s window separately
        fbank = self._augment(fbank.reshape(batch, num_windows * per_window, -1))
        fbank = self._normalise(fbank.reshape(batch * num_windows, per_window, -1))
        if fbank.shape[1] < cfg.window_frames:  # pad after normalising: s3prl's padding frames are exact zeros
            fbank = F.pad(fbank, (0, 0, 0, cfg.window_frames - fbank.shape[1]))
        fbank = fbank[:, : cfg.window_frames]

        rows, cols = cfg.feature_grid
        tokens = self.patch_embed(fbank.transpose(1, 2).unsqueeze(1), stride=(cfg.fstride, cfg.tstride))
        x = self._with_prefix(tokens, self.feature_pos_embed())
        num_frames = int(out_lens.max()) if batch else 0
        hidden_states = []
        for block in self.blocks:
            x = block(x)
            h = x[:, NUM_PREFIX_TOKENS:].reshape(batch * num_windows, rows, cols, cfg.dim).transpose(1, 2)
            h = h.reshape(batch, num_windows * cols, rows * cfg.dim)
            hidden_states.append(h[:, :num_frames].float())
        return Features(hidden_states=hidden_states, lens=out_lens)
