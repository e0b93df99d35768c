"""Masking invariants: exact counts, no duplicates, square and public (wrapping) chunks, per-sample vs shared masks,
index splits; public chunks against a port of MAE-AST-Public's chunk loop."""

import random

import pytest
import torch

from maebench.upstream.masking import chunk_mask, public_chunks, random_mask, split_indices


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("num_masked", [0, 1, 75, 99, 100])
def test_random_mask_exact_count_and_per_sample(num_masked):
    mask = random_mask(16, 100, num_masked, generator=_generator(0))
    assert mask.shape == (16, 100) and mask.dtype == torch.bool
    assert (mask.sum(1) == num_masked).all()
    if num_masked == 75:
        assert len({tuple(row.tolist()) for row in mask}) == 16  # every sample gets its own mask


def test_random_mask_is_uniform_and_reproducible():
    mask = random_mask(4000, 20, 15, generator=_generator(1))
    # every position is masked with probability 15/20; 4000 draws -> std of the rate ~0.007
    assert torch.allclose(mask.float().mean(0), torch.full((20,), 0.75), atol=0.03)
    assert torch.equal(random_mask(3, 20, 15, generator=_generator(5)), random_mask(3, 20, 15, generator=_generator(5)))


@pytest.mark.parametrize(
    ("grid", "num_masked"), [((8, 64), 384), ((8, 8), 48), ((50, 1), 37), ((6, 6), 36), ((4, 4), 0)]
)
def test_chunk_mask_exact_count(grid, num_masked):
    mask = chunk_mask(8, grid, num_masked, generator=_generator(2))
    assert mask.shape == (8, grid[0] * grid[1])
    assert (mask.sum(1) == num_masked).all()


def test_chunk_mask_per_sample_differs_and_shared_is_equal():
    per_sample = chunk_mask(8, (8, 64), 384, generator=_generator(3))
    assert len({tuple(row.tolist()) for row in per_sample}) == 8
    shared = chunk_mask(8, (8, 64), 384, shared=True, generator=_generator(3))
    assert (shared == shared[:1]).all() and (shared.sum(1) == 384).all()


def _bounding_box(mask_2d: torch.Tensor) -> tuple[int, int, int, int]:
    rows = mask_2d.any(1).nonzero().flatten()
    cols = mask_2d.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@pytest.mark.parametrize("side", [3, 4, 5])
def test_one_chunk_is_a_filled_square(side):
    """With num_masked = side^2 and a fixed side, one unclipped chunk does it: the mask is an exact square."""
    rows, cols = 20, 24
    squares = 0
    for seed in range(40):
        mask = chunk_mask(1, (rows, cols), side * side, min_side=side, max_side=side, generator=_generator(seed))
        grid = mask.view(rows, cols)
        r0, r1, c0, c1 = _bounding_box(grid)
        clipped = r1 == rows - 1 or c1 == cols - 1  # the first chunk ran over the bottom/right edge
        if not clipped:
            assert (r1 - r0 + 1, c1 - c0 + 1) == (side, side)
            assert grid[r0 : r1 + 1, c0 : c1 + 1].all()
            squares += 1
    assert squares >= 20  # most top-left corners leave room for the whole square


def test_chunk_sides_within_range():
    """An unclipped first chunk of side 3..5 covers >= 9 tokens, so 9 masked tokens lie within one 3..5 square."""
    sides = set()
    for seed in range(40):
        grid = chunk_mask(1, (30, 30), 9, generator=_generator(seed)).view(30, 30)
        r0, r1, c0, c1 = _bounding_box(grid)
        if r1 == 29 or c1 == 29:  # first chunk clipped at the edge: a second chunk was needed
            continue
        assert 3 <= r1 - r0 + 1 <= 5 and 3 <= c1 - c0 + 1 <= 5
        sides.add(max(r1 - r0, c1 - c0) + 1)
    assert sides == {3, 4, 5}


def test_chunk_masks_are_clustered():
    """Masked tokens have far more masked neighbours under chunk masking than under uniform masking."""

    def neighbour_rate(mask: torch.Tensor, rows: int, cols: int) -> float:
        grid = mask.view(-1, rows, cols).float()
        right = (grid[:, :, 1:] * grid[:, :, :-1]).sum()
        down = (grid[:, 1:, :] * grid[:, :-1, :]).sum()
        return float((right + down) / grid.sum())

    chunk = chunk_mask(16, (16, 16), 64, generator=_generator(4))
    uniform = random_mask(16, 256, 64, generator=_generator(4))
    assert neighbour_rate(chunk, 16, 16) > 2 * neighbour_rate(uniform, 16, 16)


# ---- chunks as the public MAE-AST code draws them -----------------------------------------------------------------
def _reference_chunk(start: int, side: int, num_tokens: int, chan_adjust: int) -> set[int]:
    """One chunk of MAE-AST-Public's `forward_mask` (chunk_mask branch, mae_ast/models/mae_ast.py lines 349-354),
    ported: tokens start + t_offset + chan_adjust * c_offset below the token count."""
    chunk = set()
    for t_offset in range(side):
        for c_offset in range(side):
            candidate = start + t_offset + chan_adjust * c_offset
            if candidate < num_tokens:
                chunk.add(candidate)
    return chunk


@pytest.mark.parametrize("grid", [(64, 8), (10, 3), (30, 1), (7, 8)])
def test_public_chunks_match_the_reference_loop(grid):
    rows, cols = grid
    rng = random.Random(0)
    starts = [rng.randrange(rows * cols) for _ in range(60)]
    sides = [rng.randrange(3, 6) for _ in range(60)]
    chunks = public_chunks(torch.tensor(starts), torch.tensor(sides), grid)
    for chunk, start, side in zip(chunks, starts, sides, strict=True):
        assert set(chunk.nonzero().flatten().tolist()) == _reference_chunk(start, side, rows * cols, cols)


@pytest.mark.parametrize("side", [3, 4, 5])
def test_public_chunk_shapes_wrap_at_the_frequency_edge(side):
    """num_masked = side^2 and a fixed side: the mask is exactly one chunk, a side x side block of the (time,
    frequency) grid whose columns past the last frequency token continue in the next time step."""
    rows, cols = 64, 8
    wrapped = 0
    for seed in range(60):
        mask = chunk_mask(1, (rows, cols), side * side, min_side=side, max_side=side, style="public",
                          generator=_generator(seed))[0]
        masked = set(mask.nonzero().flatten().tolist())
        if max(masked) >= (rows - side) * cols:  # a chunk in the last steps may have been cut: more were placed
            continue
        start = min(masked)
        assert masked == _reference_chunk(start, side, rows * cols, cols)
        wrapped += start % cols + side > cols
    assert wrapped >= 10  # chunks starting near the top frequency token carry on in the next step


def test_public_chunk_mask_fraction_and_per_sample():
    """75% of a 10.24 s patch grid (64 steps x 8 frequency tokens): exactly 384 masked per clip, clips differ."""
    mask = chunk_mask(16, (64, 8), 384, style="public", generator=_generator(8))
    assert (mask.sum(1) == 384).all() and mask.float().mean().item() == 0.75
    assert len({tuple(row.tolist()) for row in mask}) == 16
    shared = chunk_mask(4, (64, 8), 384, style="public", shared=True, generator=_generator(8))
    assert (shared == shared[:1]).all()


def test_public_chunk_mask_has_one_side_per_mask():
    """Sides 1 or 2 on a sparse 40 x 40 grid: a side-1 mask is scattered single tokens (few masked flat neighbours),
    a side-2 mask is 2x2 chunks (nearly every token has one). One side per mask gives masks of one kind or the
    other; a side per chunk would mix them."""
    rows = cols = 40
    mask = chunk_mask(120, (rows, cols), 40, min_side=1, max_side=2, style="public", generator=_generator(9))
    padded = torch.nn.functional.pad(mask, (cols, cols))
    neighbours = torch.zeros_like(mask)
    for shift in (1, -1, cols, -cols):
        neighbours |= padded[:, cols + shift : cols + shift + rows * cols]
    rate = (neighbours & mask).sum(1).float() / 40
    assert ((rate < 0.35) | (rate > 0.85)).all(), rate
    assert (rate < 0.35).sum() > 30 and (rate > 0.85).sum() > 30


def test_chunk_style_is_checked():
    with pytest.raises(ValueError, match="style"):
        chunk_mask(1, (4, 4), 3, style="clustered")


def test_split_indices_consistent():
    mask = chunk_mask(5, (8, 12), 70, generator=_generator(6))
    keep, masked = split_indices(mask)
    assert keep.shape == (5, 26) and masked.shape == (5, 70)
    for b in range(5):
        assert torch.equal(keep[b], (~mask[b]).nonzero().flatten())
        assert torch.equal(masked[b], mask[b].nonzero().flatten())
    both = torch.cat([keep, masked], 1).sort(1).values
    assert torch.equal(both, torch.arange(96).expand(5, -1))


def test_split_indices_with_a_known_count_skips_only_the_check():
    mask = random_mask(4, 30, 22, generator=_generator(7))
    checked, trusted = split_indices(mask), split_indices(mask, num_masked=22)
    assert all(torch.equal(a, b) for a, b in zip(checked, trusted, strict=True))


def test_split_indices_rejects_unequal_rows():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :2] = True
    with pytest.raises(ValueError, match="same number"):
        split_indices(mask)


def test_bad_counts_raise():
    with pytest.raises(ValueError):
        random_mask(2, 10, 11)
    with pytest.raises(ValueError):
        chunk_mask(2, (3, 3), 10)
