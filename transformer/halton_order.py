"""The Halton decoding order of the valeoai v2 sampler: which grid cells each step reveals, and how many.

Follows docs/reference.md#halton-sampler, reproducing the reference's numbers exactly:

* **Order.** Point i = 1, 2, … of the 2-D Halton sequence is (b₂(i), b₃(i)), the base-2 and base-3
  van der Corput radical inverses (1/2, 1/4, 3/4, 1/8, … and 1/3, 2/3, 1/9, 4/9, …). The reference
  stores them as float32, multiplies by the grid side G in float32 and floors, giving the cell
  (row = ⌊G·b₂(i)⌋, col = ⌊G·b₃(i)⌋); the first occurrence of each cell, in sequence order, over the
  first 10,000 points gives a permutation of the G² cells. A grid whose cells those 10,000 points do
  not all reach has no such order and is refused.
* **Steps.** With n tokens to reveal in T steps, step i has revealed
  rᵢ = max(i + 1, int(n·(1 − arccos((i + 1)/T)/(π/2)))) tokens once it is done (float32, truncated,
  at most n); it writes the order's entries rᵢ₋₁ … rᵢ − 1. The curve is fixed (the reference's
  `sched_pow` is unused).

Used by `sample(order="halton")`; this is a sampling order, the training mask ratio stays in
`transformer.masking`.
"""

from __future__ import annotations

import functools
import math

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


@functools.lru_cache(maxsize=1024)
def _halton_counts(num_tokens: int, steps: int) -> tuple[int, ...]:
    revealed, counts = 0, []
    for index in range(steps):
        # float32 throughout, as the reference: tensor(ratio) -> arccos -> / (π/2) -> 1 − · -> · n -> int
        ratio = torch.tensor((index + 1) / steps)
        fraction = 1 - torch.arccos(ratio) / (math.pi * 0.5)
        target = min(max(index + 1, int(fraction * num_tokens)), num_tokens)
        counts.append(max(target - revealed, 0))
        revealed = max(revealed, target)
    return tuple(counts)


def halton_tokens_per_step(num_tokens: int, steps: int, *, start_step: int = 0) -> list[int]:
    """Number of tokens the Halton sampler reveals at each step (they always sum to `num_tokens`).

    E.g. n = 256, T = 8: 20, 21, 21, 23, 25, 28, 35, 83.

    Args:
        num_tokens: n, tokens to reveal (a sample's masked tokens; G² for a blank grid).
        steps: T, decoding steps (>= 1).
        start_step: begin later in the T-step table; the first `start_step + 1` steps are merged, so
            `steps - start_step` counts come back (as `transformer.masking.tokens_per_step`).

    Returns:
        list of `steps - start_step` non-negative ints.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= start_step < steps:
        raise ValueError(f"start_step must be in [0, steps={steps}), got {start_step}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    counts = list(_halton_counts(num_tokens, steps))
    return [sum(counts[: start_step + 1]), *counts[start_step + 1 :]]
