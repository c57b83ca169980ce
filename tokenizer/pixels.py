"""The tokenizer's pixel conventions: the reference's input transform and its [-1, 1] mapping.

The reference (valeoai MaskGIT-pytorch v1) feeds the VQGAN RGB images resized so the short side equals
the target size, center-cropped (`center_crop_resize`), and mapped to [-1, 1] with x / 127.5 - 1
(`to_model_input`); decoded images come back through the inverse (`to_uint8_images`). These are facts
about the tokenizer's input, so they live here: the tokenize stage (pipeline/), the MaskGIT pipeline
object (generation/) and the tokenizer trainer all use them from this one place.

Shapes: H×W×3 uint8 arrays for pixels; B×3×H×W float tensors in [-1, 1] for the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["center_crop_resize", "to_model_input", "to_uint8_images"]


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The reference's evaluation transform: resize the short side to `size` (bicubic), center-crop.

    Args:
        image: (H, W, 3) uint8.
        size: output side in pixels.

    Returns:
        (size, size, 3) uint8.
    """
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 torch tensor in [-1, 1] (the reference's 2x - 1)."""
    import torch  # here, not at the top: the crop above is used where torch is not (decode tasks)

    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # e.g. a crop of a PIL buffer; torch.from_numpy warns on read-only memory
        array = array.copy()
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    return tensor.div_(127.5).sub_(1.0)


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float tensor in about [-1, 1] -> (B, H, W, 3) uint8 (clamped)."""
    array = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return array.to("cpu").byte().permute(0, 2, 3, 1).numpy()
