"""Image decoding, shared by every stage that reads pixels, and PNG / grid writing.

Decoding here is defensive: every input either becomes an RGB uint8 array or raises `ImageRejected`
with a reason that goes to the rejects file. Nothing is dropped silently. The reference's input
transform (resize + center crop) and its [-1, 1] mapping are the tokenizer's conventions and live in
`tokenizer.pixels`; they are re-exported here for the stages that decode and then crop.

Shapes: H×W×3 uint8 arrays for pixels; B×3×H×W float tensors in [-1, 1] for the model.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from tokenizer.pixels import center_crop_resize, to_model_input, to_uint8_images

__all__ = [
    "ImageRejected",
    "center_crop_resize",
    "decode_image",
    "encode_png",
    "image_grid",
    "to_model_input",
    "to_uint8_images",
]

# Pillow's default bomb limit is about 89 Mpx; ImageNet's largest image is far below 40 Mpx.
MAX_IMAGE_PIXELS = 64_000_000
MIN_IMAGE_SIDE = 8


class ImageRejected(ValueError):
    """An input that cannot become an RGB image; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited over white (not dropped to black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-/32-bit greyscale: scale the actual range down to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, *, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3).

    Handles CMYK, greyscale, palette, alpha and 16-bit inputs, and applies the EXIF orientation.

    Raises:
        ImageRejected: not an image, truncated or corrupt, a decompression bomb, or smaller than
            `min_side` pixels on a side.
    """
    if not data:
        raise ImageRejected("empty_file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageRejected("too_large", f"{width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels")
                if min(width, height) < min_side:
                    raise ImageRejected("too_small", f"{width}x{height} is below {min_side} px")
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb = _to_rgb(image)
                return np.asarray(rgb, dtype=np.uint8).copy()
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected("decompression_bomb", str(error)) from None
        except Image.UnidentifiedImageError:
            raise ImageRejected("not_an_image") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageRejected("corrupt", str(error)) from None


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile (B, H, W, 3) uint8 images into one (rows*H, columns*W, 3) grid with white padding."""
    count, height, width, _ = images.shape
    rows = -(-count // columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + col * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid
