"""MAE-AST (Baade, Peng, Harwath 2022): a masked autoencoder over Kaldi-fbank patches or frames.

Pretraining: fbank -> BatchNorm(affine=False) * 0.5 -> time-major tokens (patch 16x16 or frame 2x128) -> Linear
embedding + sinusoidal positions -> mask 75% -> post-LN encoder over the VISIBLE tokens only -> decoder over all
tokens (learned mask token at masked positions, positions added again) -> reconstruction (MSE) and
classification (InfoNCE within each clip) heads on the masked tokens; loss = 10 * MSE + 1 * InfoNCE.

Features (the Upstream path): the same front end, no masking, BatchNorm running statistics, the encoder only;
each layer's tokens are regrouped per time step, (B, steps, tokens_per_step * dim).

Fine-tuning "under the SSAST library" (`use_global_input`, AS / ESC-50 / KS2): SSAST's data-loader input
(`maebench.upstream.ssast_input`) replaces the model's own fbank, and the model keeps the rest of its forward,
BatchNorm included (the reference's `MAE_AST.forward` applies `batch_norm(source) * 0.5` to whatever it is given).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.errors import MaebenchError

from .blocks import Block, sinusoidal_positions
from .frontend import MAE_AST_FBANK, FbankConfig, fbank_batch, frames_to_samples, num_frames
from .interface import Features, PretrainOutput, Upstream
from .masking import CHUNK_STYLES, CHUNK_TRIMS, chunk_mask, gather_tokens, random_mask, split_indices
from .ssast import GlobalInput
from .ssast_input import ssast_loader_input
from .vocabulary import config_from_dict

NUM_MEL_BINS = 128
# (frames per token in time, mel bins per token): both tokenisers give 256 values per token
TOKEN_SHAPES = {"patch": (16, 16), "frame": (2, 128)}
MASK_TYPES = ("chunk", "random")


@dataclass
class MaeAstConfig:
    """Architecture and pretraining objective. Defaults = the released base model (patch, chunk masking).

    Field names are the vocabulary shared with SsastConfig (see `maebench.upstream.vocabulary`).
    """

    tokenizer: str = "patch"  # "patch" (16x16) | "frame" (128 mel bins x 2 frames)
    dim: int = 768
    num_heads: int = 12
    ffn_dim: int = 3072
    depth: int = 12  # encoder blocks
    decoder_depth: int = 2  # decoder blocks
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.0
    # on the token embeddings, pretraining only, before positions and masking (MAE-AST-Public
    # config/pretrain/mae_ast.yaml line 67; mae_ast/models/mae_ast.py line 393: "regularization adopted from hubert")
    dropout_input: float = 0.1
    layerdrop: float = 0.05  # encoder only, pretraining only (features always run every layer)
    mask_ratio: float = 0.75
    mask_type: str | None = None  # "chunk" | "random"; None = chunk for patch, random for frame (the paper's pairs)
    # one mask for the whole batch; None = as the public code: shared for chunk masks ("Using same mask for whole
    # batch because SSAST code is very slow", mae_ast.py line 357), per clip for random masks
    shared_mask: bool | None = None
    mask_min_side: int = 3  # chunk sides, in tokens
    mask_max_side: int = 5
    # "public": one side per mask, chunks wrap at the frequency edge (the public code); "square": a side per chunk,
    # clipped at the edges (maebench 0.1.0). See masking.chunk_mask.
    mask_chunk_style: str = "public"
    # "lowest": the public code's cut (covered token set in ascending order, first count kept); "random": 0.1.0's
    mask_trim: str = "lowest"
    recon_weight: float = 10.0
    nce_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKEN_SHAPES:
            raise MaebenchError(f"mae_ast config: tokenizer must be 'patch' or 'frame', got {self.tokenizer!r}")
        if self.mask_type is None:
            self.mask_type = "chunk" if self.tokenizer == "patch" else "random"
        if self.shared_mask is None:
            self.shared_mask = self.mask_type == "chunk"
        if self.mask_type not in MASK_TYPES:
            raise MaebenchError(f"mae_ast config: mask_type must be 'chunk' or 'random', got {self.mask_type!r}")
        if self.dim <= 0 or self.num_heads <= 0 or self.dim % self.num_heads:
            raise MaebenchError(
                f"mae_ast config: dim {self.dim} must be a positive multiple of num_heads {self.num_heads}"
            )
        if self.depth < 1 or self.decoder_depth < 0 or self.ffn_dim < 1:
            raise MaebenchError("mae_ast config: need depth >= 1, decoder_depth >= 0 and ffn_dim >= 1")
        if not 0.0 < self.mask_ratio < 1.0:
            raise MaebenchError(f"mae_ast config: mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 1 <= self.mask_min_side <= self.mask_max_side:
            raise MaebenchError(
                f"mae_ast config: need 1 <= mask_min_side <= mask_max_side, "
                f"got {self.mask_min_side}, {self.mask_max_side}"
            )
        if self.mask_chunk_style not in CHUNK_STYLES:
            raise MaebenchError(
                f"mae_ast config: mask_chunk_style must be one of {CHUNK_STYLES}, got {self.mask_chunk_style!r}"
            )
        if self.mask_trim not in CHUNK_TRIMS:
            raise MaebenchError(f"mae_ast config: mask_trim must be one of {CHUNK_TRIMS}, got {self.mask_trim!r}")
        if not 0.0 <= self.dropout_input < 1.0:
            raise MaebenchError(f"mae_ast config: dropout_input must be in [0, 1), got {self.dropout_input}")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> MaeAstConfig:
        """From a dict in the current or the 0.1.0 names; unknown fields -> MaebenchError."""
        return config_from_dict(cls, "mae_ast", config)


def _bert_init(module: nn.Module) -> None:
    """fairseq's init_bert_params for the transformer stacks: N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MaeAst(Upstream):
    """MAE-AST upstream: `forward` gives per-layer encoder features, `pretrain_loss` the masked-autoencoder loss."""

    family = "mae_ast"
    frontend: FbankConfig = MAE_AST_FBANK

    def __init__(self, config: MaeAstConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MaeAstConfig()
        self.ktime, self.kchan = TOKEN_SHAPES[cfg.tokenizer]
        self.tokens_per_step = NUM_MEL_BINS // self.kchan
        self.downsample_rate = self.ktime * self.frontend.window_shift
        self.hidden_size = self.tokens_per_step * cfg.dim
        self.num_layers = cfg.depth
        token_values = self.ktime * self.kchan

        self.batch_norm = nn.BatchNorm2d(1, affine=False)
        self.patch_embed = nn.Linear(token_values, cfg.dim)
        self.encoder_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.encoder = nn.ModuleList(self._block() for _ in range(cfg.depth))
        self.decoder_mask_token = nn.Parameter(torch.rand(cfg.dim))  # uniform [0, 1) as in the public code
        self.decoder_norm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.decoder = nn.ModuleList(self._block() for _ in range(cfg.decoder_depth))
        self.recon_head = nn.Linear(cfg.dim, token_values)
        self.class_head = nn.Linear(cfg.dim, token_values)
        self.encoder.apply(_bert_init)
        self.decoder.apply(_bert_init)
        # fixed positions per device, grown on demand; not a buffer, so never in the state dict or DDP broadcasts
        self._position_cache: dict[torch.device, Tensor] = {}

    def _block(self) -> Block:
        cfg = self.config
        return Block(
            cfg.dim,
            cfg.num_heads,
            cfg.ffn_dim,
            norm_first=False,
            eps=1e-5,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
            activation_dropout=cfg.activation_dropout,
        )

    # ---- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaeAst:
        return cls(MaeAstConfig.from_dict(config))

    def to_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    # ---- front end ---------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.patch_embed.weight.device

    def _fbank(self, wavs: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 128) Kaldi fbank on the model's device (+ SpecAugment when fine-tuning) and frame counts."""
        device = self._device()
        feats, frame_lens = fbank_batch(wavs.to(device), lens.to(device), self.frontend)
        if self.training and self.fbank_augment is not None:
            feats = self.fbank_augment(feats)
        return feats, frame_lens

    def _normalise(self, feats: Tensor, *, batch_stats: bool) -> Tensor:
        """BatchNorm2d(1, affine=False) * 0.5 (mimics AST's dataset normalisation to std 0.5)."""
        x = feats.unsqueeze(1)
        if batch_stats:
            x = self.batch_norm(x)
        else:
            bn = self.batch_norm
            x = F.batch_norm(x, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
        return x.squeeze(1) * 0.5

    def _tokenise(self, x: Tensor) -> Tensor:
        """(B, T, 128) -> (B, steps * tokens_per_step, ktime * kchan), time-major; frames past steps*ktime dropped.

        Within a token, values are ordered (time, mel) like nn.Unfold over a (B, 1, T, 128) image.
        """
        b, t, f = x.shape
        steps = t // self.ktime
        x = x[:, : steps * self.ktime].reshape(b, steps, self.ktime, self.tokens_per_step, self.kchan)
        return x.permute(0, 1, 3, 2, 4).reshape(b, steps * self.tokens_per_step, self.ktime * self.kchan)

    def _positions_for(self, n: int, like: Tensor) -> Tensor:
        table = self._position_cache.get(like.device)
        if table is None or table.shape[0] < n:
            table = sinusoidal_positions(max(n, 1024), self.config.dim).to(like.device)
            self._position_cache[like.device] = table
        return table[:n].to(like.dtype)

    # ---- transformer stacks ------------------------------------------------------------------------------------
    def _encode(self, x: Tensor, key_padding_mask: Tensor | None, *, layerdrop: float) -> list[Tensor]:
        """Input LayerNorm, dropout, post-LN blocks; returns every executed layer's output.

        Layerdrop decisions are drawn together on the host from the global generator (one read per step). With
        train.compile only the blocks are compiled (blocks.compile_blocks), so this loop and its decisions stay
        eager: a new drop pattern is neither a recompilation nor a graph break.
        """
        x = F.dropout(self.encoder_norm(x), self.config.dropout, self.training)
        dropped = [False] * len(self.encoder)
        if layerdrop > 0.0 and self.training:
            dropped = (torch.rand(len(self.encoder)) < layerdrop).tolist()
        outputs = []
        for block, drop in zip(self.encoder, dropped, strict=True):
            if drop:
                continue
            x = block(x, key_padding_mask)
            outputs.append(x)
        if not outputs:  # every layer dropped: the encoder is the identity on the normalised input
            outputs.append(x)
        return outputs

    def _decode(self, x: Tensor) -> Tensor:
        x = F.dropout(self.decoder_norm(x), self.config.dropout, self.training)
        for block in self.decoder:
            x = block(x)
        return x

    # ---- pretraining -------------------------------------------------------------------------------------------
    def num_masked(self, num_tokens: int) -> int:
        """Masked tokens for a clip of `num_tokens` tokens: the public code keeps max(1, int((1 - r) * N))."""
        return num_tokens - max(1, int((1.0 - self.config.mask_ratio) * num_tokens))

    def make_mask(self, batch: int, steps: int, *, device=None, generator: torch.Generator | None = None) -> Tensor:
        """(B, steps * tokens_per_step) bool mask, True = masked, as configured (chunk masks over the
        (time steps, frequency tokens) grid)."""
        cfg = self.config
        num_tokens = steps * self.tokens_per_step
        count = self.num_masked(num_tokens)
        if cfg.mask_type == "chunk":
            return chunk_mask(
                batch,
                (steps, self.tokens_per_step),
                count,
                min_side=cfg.mask_min_side,
                max_side=cfg.mask_max_side,
                shared=cfg.shared_mask,
                style=cfg.mask_chunk_style,
                trim=cfg.mask_trim,
                device=device,
                generator=generator,
            )
        if cfg.shared_mask:
            return random_mask(1, num_tokens, count, device=device, generator=generator).expand(batch, -1).clone()
        return random_mask(batch, num_tokens, count, device=device, generator=generator)

    def pretrain_loss(self, wavs: Tensor, lens: Tensor, *, mask: Tensor | None = None) -> PretrainOutput:
        """Masked-autoencoder loss on a batch, cropped first to its shortest clip, `lens.min()` samples.

        Nothing past a clip's end is learnt from: no padded frame enters the BatchNorm statistics, becomes a
        reconstruction target or an InfoNCE negative. The public code gets there in its loader (pad_audio: false,
        each batch cropped to its shortest clip: mae_ast_dataset.py `collater`), as maebench's loader does with
        random crops; here the batch is cut at the end, so an already cropped batch passes unchanged. Costs one
        host read of `lens` per step. Then (MAE-AST-Public mae_ast/models/mae_ast.py `forward`): BatchNorm * 0.5,
        tokens, embedding, `dropout_input`, positions, mask, encoder over the visible tokens, decoder, heads.

        `mask` (B, tokens) bool overrides the random mask (tests, analysis); every row must mask the same count.
        """
        if lens.numel():
            wavs = wavs[:, : min(int(lens.min()), wavs.shape[-1])]
        feats, _ = self._fbank(wavs, torch.full((wavs.shape[0],), wavs.shape[-1], dtype=torch.long))
        target = self._tokenise(self._normalise(feats, batch_stats=self.training))  # (B, N, 256)
        b, n, _ = target.shape
        if n < 2:
            need = frames_to_samples(-(-2 // self.tokens_per_step) * self.ktime, self.frontend)
            raise MaebenchError(
                f"mae_ast pretraining needs clips of at least {need} samples, got {wavs.shape[-1]}; use longer clips"
            )
        if mask is None:  # drawn with a known count: split without checking it (no host sync)
            keep_idx, masked_idx = split_indices(
                self.make_mask(b, n // self.tokens_per_step, device=target.device), self.num_masked(n)
            )
        else:
            keep_idx, masked_idx = split_indices(mask.to(target.device))

        positions = self._positions_for(n, target)
        tokens = F.dropout(self.patch_embed(target), self.config.dropout_input, self.training) + positions
        encoded = self._encode(gather_tokens(tokens, keep_idx), None, layerdrop=self.config.layerdrop)[-1]

        dim = encoded.shape[-1]
        full = self.decoder_mask_token.to(encoded.dtype).expand(b, n, dim)
        full = full.scatter(1, keep_idx[..., None].expand(-1, -1, dim), encoded)
        decoded = gather_tokens(self._decode(full + positions.to(full.dtype)), masked_idx)  # (B, M, D)

        masked_target = gather_tokens(target, masked_idx).float()
        recon = self.recon_head(decoded).float()
        pred = self.class_head(decoded).float()
        with torch.autocast(device_type=pred.device.type, enabled=False):  # the logits need fp32 under bf16 autocast
            mse = F.mse_loss(recon, masked_target)
            logits = torch.bmm(pred, masked_target.transpose(1, 2))  # (B, M, M): clip-internal negatives
            nce = -logits.log_softmax(dim=-1).diagonal(dim1=1, dim2=2).mean()
        cfg = self.config
        loss = cfg.recon_weight * mse + cfg.nce_weight * nce
        with torch.no_grad():
            hits = logits.argmax(dim=-1) == torch.arange(logits.shape[1], device=logits.device)
            stats = {"mse": mse.detach(), "nce": nce.detach(), "nce_acc": hits.float().mean()}
        return PretrainOutput(loss=loss, stats=stats)

    def pretrain_flops(self, num_samples: int) -> float:
        """Matmul FLOPs of one training step (forward + backward = 3 x forward) for one clip of `num_samples`.

        Counts every encoder layer (layerdrop ignored), attention score and value products included.
        """
        cfg = self.config
        n = (num_frames(int(num_samples), self.frontend) // self.ktime) * self.tokens_per_step
        if n < 1:
            return 0.0
        m = self.num_masked(n)
        k = n - m
        d, f, v = cfg.dim, cfg.ffn_dim, self.ktime * self.kchan

        def layer(tokens: int) -> float:
            projections = 2 * tokens * d * (3 * d) + 2 * tokens * d * d
            attention = 2 * 2 * tokens * tokens * d
            return projections + attention + 2 * 2 * tokens * d * f

        forward = (
            2 * n * v * d  # embedding
            + cfg.depth * layer(k)
            + cfg.decoder_depth * layer(n)
            + 2 * (2 * m * d * v)  # two heads
            + 2 * m * m * v  # InfoNCE logits
        )
        return 3.0 * forward

    # ---- features ----------------------------------------------------------------------------------------------
    def _steps(self, frame_lens: Tensor) -> Tensor:
        return torch.div(frame_lens, self.ktime, rounding_mode="floor").clamp(min=1)

    def min_input_samples(self) -> int:
        """One whole token: ktime fbank frames (2800 samples for patch tokens, 560 for frame tokens)."""
        return frames_to_samples(self.ktime, self.frontend)

    def output_lens(self, lens: Tensor) -> Tensor:
        """Valid feature steps for `lens` samples: whole tokens only (frames past a multiple of ktime dropped)."""
        lens = torch.as_tensor(lens)
        return self._steps(num_frames(lens.long(), self.frontend))

    # Feature layout, set by the fine-tuning probe: False = one frame per time step, (B, steps, tokens_per_step *
    # dim), as mainline s3prl's mae_ast upstream; True = the token sequence (B, steps * tokens_per_step, dim), as the
    # authors' s3prl expert returns it (MAE-AST-Public s3prl/mae_ast/expert.py: results["x"], downsample 320).
    token_features: bool = False
    # SSAST's fine-tuning input (see `use_global_input`); None = the model's own variable-length input
    global_input: GlobalInput | None = None

    def use_global_input(self, spec: GlobalInput | None) -> None:
        """Switch `forward` to SSAST's data-loader input: one (target_frames, 128) fbank per clip, made as SSAST's
        loader makes it (hanning / htk fbank of the mean-removed wave, cut or padded, dataset statistics), then the
        model's own BatchNorm * 0.5, tokens and encoder with no padding mask (None: back to the native input)."""
        if spec is not None and spec.target_frames < self.ktime:
            raise MaebenchError(f"mae_ast target_frames={spec.target_frames} is shorter than one token "
                                f"({self.ktime} frames)")
        self.global_input = spec

    def _global_forward(self, wavs: Tensor, lens: Tensor) -> Features:
        """Features of SSAST's fixed input: every token attends to every other (padding included, as the reference
        sees one fixed-size spectrogram); last_hidden_state = the last layer over the whole grid, which SSAST's
        ft_avgtok head averages; lens = steps that start inside the clip."""
        spec = self.global_input
        assert spec is not None
        device = self._device()
        augment = self.fbank_augment if self.training else None
        noise = self.input_augment if self.training else None
        x, frame_lens = ssast_loader_input(wavs.to(device).float(), torch.as_tensor(lens, device=device).long(), spec,
                                           augment=augment, noise=noise)
        tokens = self._tokenise(self._normalise(x, batch_stats=self.training))
        b, n, _ = tokens.shape
        steps = n // self.tokens_per_step
        layers = self._encode(self.patch_embed(tokens) + self._positions_for(n, tokens), None, layerdrop=0.0)
        valid = torch.div(frame_lens + self.ktime - 1, self.ktime, rounding_mode="floor").clamp(1, steps)
        if self.token_features:
            return Features(hidden_states=layers, lens=valid * self.tokens_per_step, last_hidden_state=layers[-1])
        hidden = [h.reshape(b, steps, self.hidden_size) for h in layers]
        return Features(hidden_states=hidden, lens=valid, last_hidden_state=hidden[-1])

    def forward(self, wavs: Tensor, lens: Tensor) -> Features:
        """Per-layer encoder features, (B, steps, tokens_per_step * dim) each (see `token_features`); no masking, no
        layerdrop. Eval mode: BatchNorm running statistics. Train mode (fine-tuning): BatchNorm batch statistics
        over the zero-padded batch, updating the running ones, as the reference's `self.batch_norm(source)` does
        when s3prl fine-tunes the upstream (mae_ast.py forward; s3prl `-f` puts the upstream in train mode);
        dropout follows the mode too. Padding tokens are hidden from attention by a key-padding mask, so in eval
        mode an item gives the same valid features alone as in any padded batch; features at padded steps are zero.

        A partial last token (frames past a multiple of ktime) is dropped: the reference counts it as valid when a
        longer clip in the batch supplies the frames (forward_padding_mask rounds up) and drops it otherwise (Unfold
        floors), so its count depends on the batch; here every clip gets floor(frames / ktime) steps.
        With `use_global_input`, SSAST's fine-tuning input instead (`_global_forward`)."""
        if self.global_input is not None:
            return self._global_forward(wavs, lens)
        feats, frame_lens = self._fbank(wavs, lens)
        if feats.shape[1] < self.ktime:  # shorter than one token: pad so every item yields one (zero-input) step
            feats = F.pad(feats, (0, 0, 0, self.ktime - feats.shape[1]))
        normalised = self._normalise(feats, batch_stats=self.training)
        if self.training and self.input_augment is not None:
            normalised = self.input_augment(normalised)
        tokens = self._tokenise(normalised)
        b, n, _ = tokens.shape
        steps = n // self.tokens_per_step
        valid_steps = self._steps(frame_lens).clamp(max=steps)
        step_ids = torch.arange(steps, device=tokens.device)
        step_padding = step_ids[None, :] >= valid_steps[:, None]  # (B, steps)
        key_padding = None
        if bool(step_padding.any()):
            key_padding = step_padding.repeat_interleave(self.tokens_per_step, dim=1)

        x = self.patch_embed(tokens) + self._positions_for(n, tokens)
        layers = self._encode(x, key_padding, layerdrop=0.0)
        if self.token_features:
            keep = (~step_padding).repeat_interleave(self.tokens_per_step, dim=1)[..., None]
            hidden = [h * keep.to(h.dtype) for h in layers]
            return Features(hidden_states=hidden, lens=valid_steps * self.tokens_per_step)
        keep = (~step_padding)[..., None]
        hidden = [h.reshape(b, steps, self.hidden_size) * keep.to(h.dtype) for h in layers]
        return Features(hidden_states=hidden, lens=valid_steps)
