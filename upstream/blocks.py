"""Transformer blocks shared by MAE-AST (post-LN, fairseq style) and SSAST (pre-LN, timm DeiT style).

Attention always goes through `scaled_dot_product_attention`, so CUDA picks a fused kernel (flash or
memory-efficient) and CPU the math path, with one code path to test.

`compile_blocks` is the compiled training path: torch.compile on each Block (regional compilation), not on the
whole training step, so the layer loop, layerdrop, masking and the filterbank stay eager Python and the compiler
sees one repeated, shape-polymorphic graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, D); key_padding_mask: (B, T) bool, True where the token is padding (ignored as a key)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """fc1 -> GELU -> dropout -> fc2."""

    def __init__(self, dim: int, hidden: int, activation_dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """One transformer layer; `norm_first` picks pre-LN (timm) or post-LN (fairseq, BERT).

    pre-LN:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    post-LN: x = norm1(x + drop(attn(x)));  x = norm2(x + drop(mlp(x)))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        norm_first: bool,
        eps: float = 1e-5,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = FeedForward(dim, ffn_dim, activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attn(self.norm1(x), key_padding_mask))
            return x + self.dropout(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attn(x, key_padding_mask)))
        return self.norm2(x + self.dropout(self.mlp(x)))


def compile_blocks(model: nn.Module, *, backend: str = "inductor") -> int:
    """torch.compile every `Block` of `model` in place; returns how many. Parameters and state-dict keys are
    unchanged, so checkpoints of a compiled run load anywhere.

    Why per block: every block runs the same code, and with parameters as graph inputs (dynamo's default
    `inline_inbuilt_nn_modules`) the encoder and decoder layers of a model share ONE compiled graph. The sequence
    and batch sizes are symbolic (`dynamic=True`), so new clip lengths and visible-token counts reuse it; the
    layerdrop decisions, the masks and the lengths' host reads happen outside it in eager Python, so they cause
    neither recompilations nor graph breaks. Bounded extra graphs: one per (pre-/post-LN family, train/eval mode,
    with/without a key-padding mask, autocast dtype), and one for a size-1 batch or sequence (dynamo specialises
    sizes 0 and 1). Call after moving the model to its device (the CPU gets its own compile option, below).
    """
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    for block in blocks:
        options = {}
        if backend == "inductor" and block.norm1.weight.device.type == "cpu":
            # CPU: dropout through ATen's random ops, which ran faster here than inductor's generated ones (measured
            # with `maebench bench compile`) and draw exactly what eager draws, so compiled and eager runs match
            options["options"] = {"fallback_random": True}
        block.compile(backend=backend, dynamic=True, **options)
    return len(blocks)


def sinusoidal_positions(num_positions: int, dim: int) -> Tensor:
    """Fixed 1-D sinusoidal table (num_positions, dim): sin on even channels, cos on odd (Vaswani et al.)."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-torch.log(torch.tensor(10000.0)) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()
