"""The Halton decoding order of the valeoai v2 sampler: which grid cells the steps reveal, in what order.

Follows docs/reference.md#halton-sampler, reproducing the reference's numbers exactly:

* **Order.** Point i = 1, 2, … of the 2-D Halton sequence is (b₂(i), b₃(i)), the base-2 and base-3
  van der Corput radical inverses (1/2, 1/4, 3/4, 1/8, … and 1/3, 2/3, 1/9, 4/9, …). The reference
  stores them as float32, multiplies by the grid side G in float32 and floors, giving the cell
  (row = ⌊G·b₂(i)⌋, col = ⌊G·b₃(i)⌋); the first occurrence of each cell, in sequence order, over the
  first 10,000 points gives a permutation of the G² cells. A grid whose cells those 10,000 points do
  not all reach has no such order and is refused.

Used by `sample(order="halton")`: a step whose schedule reveals k tokens writes the next k cells of
this order. How many each step reveals is the schedule's business (`transformer.masking`); the v2
reference's own table is the schedule "halton".
"""

from __future__ import annotations

import functools

import torch

NUM_POINTS = 10_000  # Halton points the reference draws


def radical_inverse(index: int, base: int) -> float:
    """b-ary van der Corput value of `index` (>= 1): its digits mirrored after the point, as float64.

    Computed as an exact fraction and divided once, which is the float64 the reference's integer
    generator (n / d) produces.
    """
    numerator, denominator = 0, 1
    while index > 0:
        index, digit = divmod(index, base)
        numerator = numerator * base + digit
        denominator *= base
    return numerator / denominator


@functools.lru_cache(maxsize=64)
def _halton_cells(grid_size: int) -> tuple[tuple[int, int], ...]:
    indices = range(1, NUM_POINTS + 1)
    points = torch.tensor(
        [[radical_inverse(i, 2), radical_inverse(i, 3)] for i in indices], dtype=torch.float32
    )  # (P, 2) float32, as the reference stores them
    cells = torch.floor(points * grid_size).long().tolist()  # float32 product, then floor
    seen: dict[tuple[int, int], None] = {}
    for row, col in cells:
        seen.setdefault((row, col), None)  # first occurrence wins; dicts keep insertion order
    return tuple(seen)


def halton_cells(grid_size: int) -> torch.Tensor:
    """The reference's Halton permutation of a G×G grid as (row, col) pairs.

    Args:
        grid_size: G, the side of the square token grid.

    Returns:
        LongTensor[G², 2]; column 0 indexes the height axis. For G = 16 it starts
        (8, 5), (4, 10), (12, 1), (2, 7), (10, 12), (6, 3).

    Raises:
        ValueError: G < 1, or a grid whose cells the reference's 10,000 Halton points do not all reach.
    """
    if not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive integer, got {grid_size!r}")
    cells = _halton_cells(grid_size)
    if len(cells) != grid_size * grid_size:
        raise ValueError(
            f"the Halton order cannot cover a {grid_size}x{grid_size} grid: the reference's {NUM_POINTS:,} "
            f"Halton points reach only {len(cells)} of its {grid_size * grid_size} cells"
        )
    return torch.tensor(cells, dtype=torch.long)


def halton_order(grid_size: int) -> torch.Tensor:
    """The same permutation as raster indices row·G + col: LongTensor[G²] (see `halton_cells`)."""
    cells = halton_cells(grid_size)
    return cells[:, 0] * grid_size + cells[:, 1]
