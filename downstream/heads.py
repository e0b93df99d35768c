"""Classification heads on upstream features: SUPERB's utterance head and SSAST's `ft_avgtok` head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maebench.downstream.batching import masked_mean
from maebench.upstream.interface import Features, Upstream


class SuperbHead(nn.Module):
    """SUPERB's utterance head: softmax-weighted layer sum -> Linear(D, P) -> masked mean -> Linear(P, C).

    `forward_frames` is the s3prl computation on frame-level features; `forward_pooled` takes per-layer masked
    means (N, L, D) and gives the same outputs (everything before the pooling is linear per frame).
    """

    def __init__(self, num_layers: int, dim: int, num_classes: int, projector_dim: int = 256, *,
                 last_only: bool = False):
        super().__init__()
        # last_only: s3prl's `-s last_hidden_state` (the last layer alone, num_layers 1) instead of the weighted sum
        self.last_only = last_only
        self.layer_logits = nn.Parameter(torch.zeros(1 if last_only else num_layers))
        self.projector = nn.Linear(dim, projector_dim)
        self.classifier = nn.Linear(projector_dim, num_classes)

    def layer_weights(self) -> Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def rounded_layer_weights(self) -> list[float]:
        """The softmax layer weights as results.json records them."""
        return [round(float(w), 6) for w in self.layer_weights().detach().cpu()]

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        weights = self.layer_weights().to(pooled.dtype)
        return self.classifier(self.projector((weights[None, :, None] * pooled).sum(dim=1)))

    def forward_features(self, features: Features) -> Tensor:
        """Logits from an upstream's `Features` (the last layer alone when `last_only`)."""
        hidden = features.hidden_states[-1:] if self.last_only else features.hidden_states
        return self.forward_frames(hidden, features.lens)

    def forward_frames(self, hidden_states: Sequence[Tensor], lens: Tensor) -> Tensor:
        weights = self.layer_weights()
        summed = sum(w.to(h.dtype) * h for w, h in zip(weights, hidden_states, strict=True))
        return self.classifier(masked_mean(self.projector(summed), lens))


class AvgTokHead(nn.Module):
    """SSAST's `ft_avgtok` head: mean of the last layer's valid tokens -> LayerNorm(token_dim) -> Linear.

    Patch upstreams concatenate the tokens of one time step into a frame, (B, T, k * token_dim); every valid frame
    holds all k tokens, so the token mean is the frame mean split into its k tokens and averaged, and the head
    sees token_dim features as in SSAST rather than k times as many. Pooling runs in float32 (bf16 autocast).
    """

    def __init__(self, dim: int, num_classes: int, token_dim: int | None = None):
        super().__init__()
        self.token_dim = token_dim or dim
        if dim % self.token_dim:
            raise ValueError(f"frame width {dim} is not a multiple of the token width {self.token_dim}")
        self.norm = nn.LayerNorm(self.token_dim)
        self.classifier = nn.Linear(self.token_dim, num_classes)

    def forward_features(self, features: Features) -> Tensor:
        """Logits from an upstream's `Features`: its `last_hidden_state` averaged over every frame when it has one
        (SSAST's global input: `v.norm` output, padding tokens included, as finetuningavgtok averages
        `x[:, cls_token_num:]`, ssast src/models/ast_models.py line 262), else the last layer's valid frames."""
        last = features.last_hidden_state
        if last is not None:
            whole = torch.full((last.shape[0],), last.shape[1], device=last.device, dtype=torch.long)
            return self.forward_frames([last], whole)
        return self.forward_frames(features.hidden_states, features.lens)

    def forward_frames(self, hidden_states: Sequence[Tensor], lens: Tensor) -> Tensor:
        frames = masked_mean(hidden_states[-1].float(), lens)  # (B, k * token_dim)
        tokens = frames.unflatten(-1, (-1, self.token_dim)).mean(dim=1)
        return self.classifier(self.norm(tokens))


def token_width(upstream: Upstream, frame_dim: int) -> int:
    """Width of one transformer token in `upstream`'s frames: its config's `dim` (MAE-AST, SSAST) when that
    divides the frame width, else the whole frame."""
    dim = upstream.to_config().get("dim")
    return dim if isinstance(dim, int) and 0 < dim <= frame_dim and frame_dim % dim == 0 else frame_dim
