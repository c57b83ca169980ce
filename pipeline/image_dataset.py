"""A torch Dataset over an ImageNet-style folder tree (`root/<class>/*.png|jpg`), for tokenizer training.

Classes are the sorted sub-folder names (label = position in that order, like torchvision's
ImageFolder). Decoding goes through `pipeline.images.decode_image` (CMYK, alpha, 16-bit, EXIF handled).
Training transform = taming's ImageNet one: resize the short side to `image_size` (bicubic), then a
random `image_size` square crop, plus an optional horizontal flip; evaluation transform = the
reference's resize + center crop (`pipeline.images.center_crop_resize`). Items are
(image (3, S, S) float32 in [-1, 1], label int).

An unreadable file does not stop a long training run: it is logged once and replaced by the next
readable file in the listing (`rejected` lists what was skipped).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.images import ImageRejected, center_crop_resize, decode_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_image_folder(
    root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, label) for every image under `root/<class>/`, and the class names in label order.

    Raises:
        FileNotFoundError: `root` is not a directory.
        ValueError: no class folders, or no image files in them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    samples = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in extensions and path.is_file():
                samples.append((path, label))
    if not samples:
        raise ValueError(f"no images with extensions {extensions} under {root}/<class>/")
    return samples, classes


def resize_short_side_random_crop(
    image: np.ndarray, size: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """Resize the short side to `size` (bicubic), then crop a random `size`×`size` square.

    Args:
        image: (H, W, 3) uint8.
        size: output side.
        generator: torch RNG for the crop offset (default: the global one).

    Returns:
        (size, size, 3) uint8.
    """
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_h, new_w) != (height, width):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top = int(torch.randint(new_h - size + 1, (1,), generator=generator))
    left = int(torch.randint(new_w - size + 1, (1,), generator=generator))
    return image[top : top + size, left : left + size]


class ImageFolderDataset(Dataset):
    """Images of `root/<class>/*` as (float (3, S, S) in [-1, 1], label) pairs.

    Args:
        root: folder with one sub-folder per class.
        image_size: output side S.
        random_crop: taming's training crop (True) or the reference's center crop (False).
        horizontal_flip: flip with probability ½ (training augmentation).
        extensions: file suffixes to include (lower case).

    Raises:
        FileNotFoundError, ValueError: see `list_image_folder`; `image_size` not positive.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        *,
        random_crop: bool = True,
        horizontal_flip: bool = True,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        self.samples, self.classes = list_image_folder(root, extensions)
        self.image_size = image_size
        self.random_crop = random_crop
        self.horizontal_flip = horizontal_flip
        self.rejected: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded (H, W, 3) uint8 pixels of item `index`, or of the next readable file."""
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return decode_image(path.read_bytes()), label
            except (ImageRejected, OSError) as error:
                if str(path) not in self.rejected:
                    self.rejected.append(str(path))
                    logger.warning("skipping unreadable image %s: %s", path, error)
        raise ValueError(f"no readable image under {self.root}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, label = self._pixels(index)
        if self.random_crop:
            pixels = resize_short_side_random_crop(pixels, self.image_size)
        else:
            pixels = center_crop_resize(pixels, self.image_size)
        if self.horizontal_flip and bool(torch.rand(()) < 0.5):
            pixels = pixels[:, ::-1]
        # A copy: decoded/cropped arrays can be read-only views, which torch.from_numpy warns about.
        image = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float()  # (3, S, S)
        return image.div_(127.5).sub_(1.0), label
