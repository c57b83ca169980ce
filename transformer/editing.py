"""Token-level editing on top of `sample()`: inpainting and outpainting.

Follows docs/reference.md#editing. Both set the positions to regenerate to [MASK] and decode with
`sample(init_tokens=...)`, so known tokens are never changed and the sampling knobs mean the same as
in `sample()` (pass them as keyword arguments):

* `inpaint`: regenerate a region of an existing grid (valeoai's `init_code`, with the schedule spread
  over the region's own token count rather than the whole grid). `generation.MaskGIT.inpaint` calls
  it for images; with a box widened by `latent_box` and `steps=12, start_step=2` it is the JAX demo's
  class-guided edit.
* `outpaint`: extend a grid beyond its border, one model-sized window at a time; each window keeps
  `grid - chunk` known rows/columns as context and decodes `chunk` new ones (the paper extends right
  by 50 %; repeating gives panoramas).

The pixel-space blend (upsampled, blurred region mask; out = gen·m + input·(1 − m)) needs the
tokenizer's images and lives in `generation/regions.py`.

Dimensions: B batch, h×w token grid (h = w = grid_size of the model), W a possibly wider canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from transformer.config import MAX_SEED
from transformer.model import unwrap_model
from transformer.sample import SampleTrace, per_sample_generators, sample

DIRECTIONS = ("right", "left", "down", "up")


class TokenBox(NamedTuple):
    """A box on the token grid, in token units, end-exclusive."""

    top: int
    left: int
    bottom: int
    right: int


class EditResult(NamedTuple):
    """Edited token grids, where they were regenerated, and the sampler's trace when asked for."""

    tokens: torch.Tensor  # LongTensor[B, h, W]
    region: torch.Tensor  # BoolTensor[B, h, W]: True where tokens were generated
    trace: SampleTrace | None = None  # inpaint with return_trace=True: per-step (T', B, h, w)


def latent_box(
    top: int, left: int, height: int, width: int, *, downsample: int, grid_size: int, margin: int = 1
) -> TokenBox:
    """Token box covering a pixel box, widened by `margin` tokens (JAX demo: 1), clipped to the grid.

    Rows run from max(0, top//f − margin) to min(L, top//f + height//f + margin), columns likewise.

    Args:
        top, left, height, width: the pixel box.
        downsample: f, pixels per token side.
        grid_size: L, tokens per side.
        margin: extra tokens on each side.

    Returns:
        TokenBox(top, left, bottom, right), end-exclusive.
    """
    if min(height, width) < 1 or min(top, left) < 0:
        raise ValueError(
            f"box must have top, left >= 0 and height, width >= 1; got {(top, left, height, width)}"
        )
    if downsample < 1 or grid_size < 1 or margin < 0:
        raise ValueError(
            f"need downsample >= 1, grid_size >= 1, margin >= 0; got {(downsample, grid_size, margin)}"
        )
    box = TokenBox(
        top=max(0, top // downsample - margin),
        left=max(0, left // downsample - margin),
        bottom=min(grid_size, top // downsample + height // downsample + margin),
        right=min(grid_size, left // downsample + width // downsample + margin),
    )
    if box.bottom <= box.top or box.right <= box.left:
        raise ValueError(
            f"pixel box {(top, left, height, width)} lies outside the {grid_size}×{grid_size} token grid"
        )
    return box


def box_mask(
    box: TokenBox, grid_size: int, batch: int = 1, device: torch.device | str | None = None
) -> torch.Tensor:
    """BoolTensor[B, grid, grid], True inside `box`."""
    mask = torch.zeros(batch, grid_size, grid_size, dtype=torch.bool, device=device)
    mask[:, box.top : box.bottom, box.left : box.right] = True
    return mask


def _check_grid(tokens: torch.Tensor, mask_token_id: int, name: str = "tokens") -> None:
    if tokens.dim() != 3:
        raise ValueError(f"{name} must have shape (B, h, w), got {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= mask_token_id):
        raise ValueError(
            f"{name} must hold codes in [0, {mask_token_id}), got [{int(tokens.min())}, {int(tokens.max())}]"
        )


def inpaint(
    model: nn.Module,
    tokens: torch.Tensor,
    region: torch.Tensor,
    class_ids: torch.Tensor | Sequence[int],
    **sampling: Any,
) -> EditResult:
    """Regenerate `region` of existing token grids; every other token is kept exactly.

    Args:
        model: MaskTransformer (or wrapper).
        tokens: LongTensor[B, h, w] of codes, h = w = the model's grid.
        region: BoolTensor[B, h, w] or [h, w] (same region for all), True = regenerate.
        class_ids: LongTensor[B] classes to condition on.
        **sampling: keyword arguments of `sample()` (steps, temperature, cfg_weight, seeds,
            start_step, return_trace, ...).

    Returns:
        EditResult(tokens LongTensor[B, h, w], region BoolTensor[B, h, w], trace or None).
    """
    config = unwrap_model(model).config
    _check_grid(tokens, config.mask_token_id)
    region = torch.as_tensor(region, device=tokens.device)
    if region.dtype != torch.bool:
        raise ValueError(f"region must be a boolean mask, got {region.dtype}")
    if region.dim() == 2:
        region = region.expand(tokens.shape[0], -1, -1)
    if region.shape != tokens.shape:
        raise ValueError(
            f"region must have shape {tuple(tokens.shape)} or {tuple(tokens.shape[1:])}, "
            f"got {tuple(region.shape)}"
        )
    init = torch.where(region, torch.full_like(tokens, config.mask_token_id), tokens)
    result = sample(model, class_ids, init_tokens=init, **sampling)
    return EditResult(tokens=result.tokens, region=region.clone(), trace=result.trace)


def outpaint(
    model: nn.Module,
    tokens: torch.Tensor,
    class_ids: torch.Tensor | Sequence[int],
    *,
    extend: int,
    direction: Literal["right", "left", "down", "up"] = "right",
    chunk: int | None = None,
    seeds: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    **sampling: Any,
) -> EditResult:
    """Extend token grids by `extend` rows or columns, decoding one model-sized window at a time.

    Args:
        model: MaskTransformer (or wrapper) with grid size L.
        tokens: LongTensor[B, L, W] (or [B, H, L] for up/down) of codes; the extended side may be any
            length >= L - chunk, so repeated calls build panoramas.
        class_ids: LongTensor[B].
        extend: new rows/columns to generate (>= 1).
        direction: side to extend.
        chunk: new rows/columns per window (default L // 2, the paper's 50 %); each window keeps
            L − chunk existing ones as context.
        seeds: one per sample; each window's seeds are derived from it (batch-independent).
        generator: draws the per-sample seeds when `seeds` is not given.
        **sampling: other keyword arguments of `sample()`.

    Returns:
        EditResult(tokens [B, L, W + extend] or [B, H + extend, L], region True at new tokens).
    """
    config = unwrap_model(model).config
    grid = config.grid_size
    _check_grid(tokens, config.mask_token_id)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if extend < 1:
        raise ValueError(f"extend must be >= 1, got {extend}")
    chunk = grid // 2 if chunk is None else chunk
    if not 1 <= chunk < grid:
        raise ValueError(f"chunk must be in [1, {grid}), got {chunk}")
    axis = 2 if direction in ("right", "left") else 1  # the dimension that grows
    across = 1 if axis == 2 else 2
    if tokens.shape[across] != grid:
        raise ValueError(
            f"to extend {direction}, tokens must have {grid} {'rows' if axis == 2 else 'columns'} "
            "(the model grid), "
            f"got shape {tuple(tokens.shape)}"
        )
    if tokens.shape[axis] < grid - chunk:
        raise ValueError(
            f"tokens need at least {grid - chunk} {direction}-most lines of context, got {tokens.shape[axis]}"
        )
    at_end = direction in ("right", "down")
    batch = tokens.shape[0]
    window_generators = per_sample_generators(batch, seeds=seeds, generator=generator)

    canvas = tokens.long()
    done = 0
    while done < extend:
        new = min(chunk, extend - done)
        context = (
            canvas.narrow(axis, canvas.shape[axis] - (grid - new), grid - new)
            if at_end
            else canvas.narrow(axis, 0, grid - new)
        )
        blank_shape = list(context.shape)
        blank_shape[axis] = new
        blank = torch.full(blank_shape, config.mask_token_id, dtype=torch.long, device=canvas.device)
        window = torch.cat([context, blank] if at_end else [blank, context], dim=axis)  # (B, L, L)
        window_seeds = [int(torch.randint(0, MAX_SEED, (1,), generator=g)) for g in window_generators]
        decoded = sample(model, class_ids, init_tokens=window, seeds=window_seeds, **sampling).tokens
        fresh = decoded.narrow(axis, grid - new, new) if at_end else decoded.narrow(axis, 0, new)
        canvas = torch.cat([canvas, fresh] if at_end else [fresh, canvas], dim=axis)
        done += new
    region = torch.zeros_like(canvas, dtype=torch.bool)
    region.narrow(axis, canvas.shape[axis] - extend if at_end else 0, extend).fill_(True)
    return EditResult(tokens=canvas, region=region)
