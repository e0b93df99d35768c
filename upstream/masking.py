"""Token masks for masked pretraining: uniform random and chunk masks, batched without Python token loops.

Every row of a mask has exactly `num_masked` True entries, so masked and visible tokens can be gathered into
dense (B, M, D) / (B, K, D) tensors with no padding (`split_indices`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_count(num_tokens: int, num_masked: int) -> None:
    if not 0 <= num_masked <= num_tokens:
        raise ValueError(f"cannot mask {num_masked} of {num_tokens} tokens")


def random_mask(
    batch: int, num_tokens: int, num_masked: int, *, device=None, generator: torch.Generator | None = None
) -> Tensor:
    """(batch, num_tokens) bool, True = masked: `num_masked` tokens per row drawn uniformly without replacement."""
    _check_count(num_tokens, num_masked)
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    chosen = noise.argsort(dim=1)[:, :num_masked]
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=noise.device)
    return mask.scatter_(1, chosen, True)


# "public": MAE-AST-Public's chunks; "ssast": the same shapes as SSAST's gen_maskid_patch draws them (token 0 never
# masked); "square": a side per chunk, clipped at the edges (maebench 0.1.0).
CHUNK_STYLES = ("public", "ssast", "square")
# "lowest": as both references (chunks placed until MORE than the count are covered, then the lowest token indices
# kept: Python's `list(set)[:count]` of small ints); "random": maebench 0.1.0 (placed until the count is reached,
# the excess trimmed at random from the last chunk's new tokens).
CHUNK_TRIMS = ("lowest", "random")


def chunk_mask(
    batch: int,
    grid: tuple[int, int],
    num_masked: int,
    *,
    min_side: int = 3,
    max_side: int = 5,
    shared: bool = False,
    style: str = "square",
    trim: str = "random",
    device=None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(batch, rows * cols) bool over the row-major flattening of a rows x cols token grid.

    Three ways to draw a chunk:
    - "square": its own side in [min_side, max_side] and a uniformly random top-left cell; a square clipped at the
      grid's right and bottom edges.
    - "public", as MAE-AST-Public draws it (mae_ast/models/mae_ast.py lines 343-357, after SSAST's
      `gen_maskid_patch`): ONE side per mask in [min_side, max_side]; the top-left is a uniform flat token index s
      and the chunk is {s + a + cols * b : 0 <= a, b < side} cut at the grid's end, so a chunk running past the
      last column wraps into the next row.
    - "ssast": the same, as SSAST's `gen_maskid_patch` (src/models/ast_models.py) draws it, which also never
      masks token 0 (its `mask_cand > 0`).
    Two ways to cut the covered tokens to `num_masked` (`trim`, see CHUNK_TRIMS): "lowest" (the references) or
    "random". Placements are drawn in blocks of many chunks per sample, each block a few batched tensor ops (one
    host sync per block), so neither samples nor tokens nor single chunks are looped over in Python.
    `shared=True` draws one mask for the whole batch (what the public MAE-AST code does, for speed).
    """
    rows, cols = grid
    num_tokens = rows * cols
    _check_count(num_tokens, num_masked)
    if not 1 <= min_side <= max_side:
        raise ValueError(f"chunk sides must satisfy 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if style not in CHUNK_STYLES:
        raise ValueError(f"chunk style must be one of {CHUNK_STYLES}, got {style!r}")
    if trim not in CHUNK_TRIMS:
        raise ValueError(f"chunk trim must be one of {CHUNK_TRIMS}, got {trim!r}")
    coverable = num_tokens - (style == "ssast")
    if num_masked > coverable:
        raise ValueError(f"cannot mask {num_masked} of {num_tokens} tokens without token 0")
    # the references stop once MORE than the count is covered (their `while len(...) <= count`)
    needed = min(num_masked + 1, coverable) if trim == "lowest" else num_masked
    draws = 1 if shared else batch
    # enough placements per block that one block nearly always suffices (~3x the fewest smallest chunks needed)
    block = max(8, 3 * -(-needed // (min_side * min_side)))
    max_blocks = 64  # a cap for pathological requests (num_masked ~ num_tokens); the rest is filled at random below
    if style != "square":  # one side per mask, drawn before its chunks
        mask_side = torch.randint(min_side, max_side + 1, (draws, 1), device=device, generator=generator)
    # order[b, i]: index of the first placement covering token i (placements numbered across blocks)
    uncovered = float(block * max_blocks)
    order = torch.full((draws, num_tokens), uncovered, device=device)
    for first_index in range(0, block * max_blocks, block):
        if needed == 0:
            break
        if style == "square":
            chunks = _square_chunks(draws, block, grid, min_side, max_side, device, generator)
        else:
            starts = torch.randint(0, num_tokens, (draws, block), device=device, generator=generator)
            chunks = public_chunks(starts, mask_side.expand(draws, block), grid, max_side)
            if style == "ssast":
                chunks[..., 0] = False
        index = torch.arange(first_index, first_index + block, device=device, dtype=torch.float32)[None, :, None]
        first_cover = torch.where(chunks, index, uncovered).amin(dim=1)  # (draws, tokens)
        order = torch.minimum(order, first_cover)
        if bool(((order < uncovered).sum(1) >= needed).all()):
            break
    if style == "ssast":
        order[:, 0] = uncovered + 1  # after every other token, covered or not
    if trim == "lowest":
        chosen = _lowest_covered(order, needed, num_masked)
    else:
        # keep the num_masked earliest-covered tokens: whole chunks, then a random part of the chunk that crossed
        # the count (ties broken at random); tokens no chunk covered only come in if the placement cap was hit
        tie_break = torch.rand(draws, num_tokens, device=device, generator=generator)
        chosen = (order + tie_break).argsort(dim=1)[:, :num_masked]
    mask = torch.zeros(draws, num_tokens, dtype=torch.bool, device=device).scatter_(1, chosen, True)
    return mask.expand(batch, num_tokens).clone() if shared else mask


def _lowest_covered(order: Tensor, needed: int, num_masked: int) -> Tensor:
    """(draws, num_masked) token indices: the lowest ones covered by the first k placements, k the fewest that
    cover at least `needed` tokens (the references' stopping rule), as `list(set(covered))[:num_masked]` keeps."""
    num_tokens = order.shape[1]
    tokens = torch.arange(num_tokens, device=order.device)
    if num_masked == 0:
        return tokens[None, :0].expand(order.shape[0], 0)
    last = order.sort(dim=1).values[:, needed - 1 : needed]  # the placement that brought the cover to `needed`
    rank = torch.where(order <= last, tokens, tokens + num_tokens)  # covered tokens first, each part ascending
    return rank.argsort(dim=1)[:, :num_masked]


def _square_chunks(draws: int, block: int, grid: tuple[int, int], min_side: int, max_side: int, device,
                   generator: torch.Generator | None) -> Tensor:
    """(draws, block, rows * cols) bool: `block` squares per draw, each its own side, clipped at the edges."""
    rows, cols = grid
    side = torch.randint(min_side, max_side + 1, (draws, block, 1), device=device, generator=generator)
    top = torch.randint(0, rows, (draws, block, 1), device=device, generator=generator)
    left = torch.randint(0, cols, (draws, block, 1), device=device, generator=generator)
    in_rows = (torch.arange(rows, device=device) >= top) & (torch.arange(rows, device=device) < top + side)
    in_cols = (torch.arange(cols, device=device) >= left) & (torch.arange(cols, device=device) < left + side)
    return (in_rows[..., :, None] & in_cols[..., None, :]).reshape(draws, block, rows * cols)


def public_chunks(starts: Tensor, sides: Tensor, grid: tuple[int, int], max_side: int | None = None) -> Tensor:
    """(..., rows * cols) bool: the chunk {start + a + cols * b : 0 <= a, b < side} below rows * cols, for each
    flat start index and side (same shapes), as the public MAE-AST / SSAST chunk masks draw one."""
    rows, cols = grid
    tokens = torch.arange(rows * cols, device=starts.device)
    offset = tokens - starts[..., None]  # (..., tokens): how far past the chunk's first token
    side = sides[..., None]
    covered = torch.zeros(offset.shape, dtype=torch.bool, device=starts.device)
    for b in range(int(sides.max()) if max_side is None else max_side):  # one step per chunk row: <= 5 tensor ops
        within = offset - cols * b
        covered |= (within >= 0) & (within < side) & (b < side)
    return covered


def split_indices(mask: Tensor, num_masked: int | None = None) -> tuple[Tensor, Tensor]:
    """(keep_idx (B, K), masked_idx (B, M)), each ascending, from a (B, T) bool mask with equal counts per row.

    Pass `num_masked` when the mask was drawn here with that count: the count check (two host syncs on CUDA, and
    graph breaks under torch.compile) is then skipped.
    """
    if num_masked is None:
        counts = mask.sum(1)
        num_masked = int(counts[0]) if mask.shape[0] else 0
        if bool((counts != num_masked).any()):
            raise ValueError("every row of the mask must mask the same number of tokens")
    # a stable sort of 0 (visible) before 1 (masked) lists visible then masked positions, each in ascending order
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    num_keep = mask.shape[1] - num_masked
    return order[:, :num_keep], order[:, num_keep:]


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b, m]] for (B, T, D) x and (B, M) idx -> (B, M, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
