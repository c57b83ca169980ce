"""Real labelled images that registry packages ship, for the quickstart, tests and benchmarks.

Fashion-MNIST (Zalando, MIT) comes from Debian's `dataset-fashion-mnist` package: installed system-wide
under /usr/share/datasets, or unpacked into the repository's `.cache/datasets` by scripts/setup.sh.
Nothing is downloaded at run time. See docs/architecture.md#platform-notes ("Offline assets").
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)

_REPO_ROOT = Path(__file__).resolve().parent.parent


def fashion_mnist_dir() -> Path:
    """Directory holding the Fashion-MNIST IDX files, or a clear error saying how to get them."""
    candidates = [
        os.environ.get("MASKGIT_FASHION_MNIST_DIR"),
        "/usr/share/datasets/fashion-mnist",
        _REPO_ROOT / ".cache/datasets/usr/share/datasets/fashion-mnist",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "Fashion-MNIST not found: run scripts/fetch_datasets.sh (unpacks Debian's dataset-fashion-mnist "
        "into .cache/datasets), `apt-get install dataset-fashion-mnist`, or set MASKGIT_FASHION_MNIST_DIR"
    )


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels.

    Args:
        split: "train" (60,000 images) or "test" (10,000).

    Returns:
        images (N, 28, 28) uint8 greyscale, labels (N,) int64 in [0, 10).
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = fashion_mnist_dir()
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def balanced_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of `per_class` samples of every class, in a seeded random order."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return rng.permutation(np.concatenate(picks))


def to_rgb(images: np.ndarray, size: int | None = None) -> np.ndarray:
    """(N, H, W) greyscale uint8 -> (N, size, size, 3) RGB uint8 (bicubic resize when size is given)."""
    if size is not None and size != images.shape[1]:
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images]
        )
    return np.repeat(images[..., None], 3, axis=-1)


def write_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    root: str | Path,
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES,
    fmt: str = "png",
) -> Path:
    """Write images as an ImageNet-style tree `root/<class>/<index>.<fmt>` and return `root`.

    Class folder names are prefixed with their index (`00-t-shirt`) so sorted folder order is label order.
    """
    root = Path(root)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"{int(label):02d}-{class_names[int(label)]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:06d}.{fmt}")
    return root
