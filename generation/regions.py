"""Where an edit happens: pixel boxes and masks as token regions, and the blend back into pixels.

Editing works on the token grid (docs/reference.md#editing): a pixel box becomes the token box that
covers it, widened by `margin` tokens (the JAX demo uses 1); a free-form pixel mask regenerates every
token whose f×f cell it touches. After decoding, the generated pixels are blended into the original
through the token region upsampled to pixels and Gaussian-blurred with radius image_size/16 − 1:
out = generated·m + original·(1 − m), so the seam is soft and untouched pixels stay exact.

These are the only implementations of the mapping and the blend; the CLI, the Serve app and the
generation pipeline all call them.

Dimensions: H×W pixels, f pixels per token side, h×w = (H/f)×(W/f) token grid.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from transformer.editing import box_mask, latent_box


class PixelBox(NamedTuple):
    """A pixel box: top-left corner and size, in pixels of the model-resolution image."""

    top: int
    left: int
    height: int
    width: int


def box_to_token_region(
    box: PixelBox | tuple[int, int, int, int], image_size: int, downsample: int, *, margin: int = 1
) -> np.ndarray:
    """(h, w) bool token region covering a pixel box, widened by `margin` tokens.

    Raises:
        ValueError: the box is empty, negative, or extends past the `image_size`² image.
    """
    top, left, height, width = (int(v) for v in box)
    if top + height > image_size or left + width > image_size:
        raise ValueError(
            f"box (top {top}, left {left}, height {height}, width {width}) extends past the "
            f"{image_size}×{image_size} image"
        )
    grid = image_size // downsample
    token_box = latent_box(top, left, height, width, downsample=downsample, grid_size=grid, margin=margin)
    return box_mask(token_box, grid)[0].numpy()  # (h, w)


def mask_to_token_region(mask: np.ndarray, downsample: int) -> np.ndarray:
    """(H, W) bool pixel mask -> (h, w) bool token region; a token is regenerated when any pixel of its
    f×f cell is masked, so the region always covers the mask.

    Raises:
        ValueError: the mask has the wrong shape or selects nothing.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] % downsample or mask.shape[1] % downsample:
        raise ValueError(
            f"mask must be (H, W) with sides divisible by {downsample}, got shape {tuple(mask.shape)}"
        )
    if not mask.any():
        raise ValueError("mask selects no pixels (light pixels mark the region to regenerate)")
    height, width = mask.shape
    cells = mask.astype(bool).reshape(height // downsample, downsample, width // downsample, downsample)
    return cells.any(axis=(1, 3))


def blend_into(
    generated: np.ndarray, original: np.ndarray, region: np.ndarray, *, blur_radius: float | None = None
) -> np.ndarray:
    """Blend generated pixels into the original through the upsampled, blurred token region.

    Args:
        generated: (B, H, W, 3) uint8 decoded edits.
        original: (H, W, 3) uint8 image (or (B, H, W, 3), one per edit).
        region: (h, w) bool token region of regenerated positions.
        blur_radius: Gaussian blur radius in pixels (default max(H, W)/16 − 1, the JAX demo's value).

    Returns:
        (B, H, W, 3) uint8: generated·m + original·(1 − m).
    """
    from PIL import Image, ImageFilter

    height, width = generated.shape[1:3]
    radius = max(0.0, max(height, width) / 16 - 1) if blur_radius is None else blur_radius
    mask = Image.fromarray(region.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    if radius > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(radius))
    weight = np.asarray(mask, dtype=np.float32)[None, :, :, None] / 255.0  # (1, H, W, 1)
    original = original if original.ndim == 4 else original[None]
    blended = generated.astype(np.float32) * weight + original.astype(np.float32) * (1.0 - weight)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
