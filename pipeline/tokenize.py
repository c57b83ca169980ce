"""The tokenize stage as a plain callable: uint8 images in, uint16 VQGAN token grids out.

`TokenizeBatch` follows docs/architecture.md#conventions (item 8) and Ray's batch-inference examples:
`__init__` loads the VQGAN once, `__call__(batch)` transforms one batch dict, and resources (GPUs,
actor count, batch size) are chosen where Ray runs it, in the tokenize job's actors (jobs/tokenize.py).
It runs without Ray.

The model input is the reference's normalisation x / 127.5 - 1 (`tokenizer.pixels.to_model_input`).
With `flip=True` a second view holds the tokens of the horizontally flipped image (not the flipped
tokens of the image: a VQGAN's codes are not mirror-symmetric), so training keeps the reference's
random horizontal flip while reading pre-computed tokens.

Shapes: B images, R×R pixels, V views (1, or 2 with the flip), h×w token grid (R / f).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenizer.checkpoint import tokenizer_identity  # re-exported: the jobs call it from here
from tokenizer.pixels import to_model_input

__all__ = ["TokenizeBatch", "tokenizer_identity"]


class TokenizeBatch:
    """Encode image batches to token grids with a VQGAN loaded once per instance (per Ray actor).

    Args:
        tokenizer: a VQGAN folder (`config.json` + `model.safetensors`), a taming checkpoint, or an
            fsspec URL of either (downloaded once).
        flip: also encode the horizontally flipped images (view 1).
        batch_size: images per forward pass; a larger `__call__` batch is split into these.
        device: "cuda", "cpu", ...; default CUDA when visible (Ray hides GPUs from CPU actors).
        num_threads: torch CPU threads for this instance; None: see `instances_per_node`.
        instances_per_node: when `num_threads` is None and the model runs on the CPU, the instances
            sharing this node's cores (the tokenize job's actors): each takes cores // this many torch
            threads, so they do not oversubscribe the cores. None keeps torch's setting.
        storage_options: fsspec options for a remote `tokenizer`.
    """

    def __init__(
        self,
        tokenizer: str,
        *,
        flip: bool = False,
        batch_size: int = 64,
        device: str | None = None,
        num_threads: int | None = None,
        instances_per_node: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        import os

        import torch

        from tokenizer.checkpoint import load_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if num_threads is None and instances_per_node and self.device.type == "cpu":
            num_threads = max(1, (os.cpu_count() or 1) // instances_per_node)
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model = load_tokenizer(tokenizer, map_location=self.device, storage_options=storage_options)
        self.model.eval().requires_grad_(False)
        if self.model.config.codebook_size > 65536:
            raise ValueError(
                f"codebook of {self.model.config.codebook_size} codes does not fit uint16 tokens"
            )
        self.flip = flip
        self.batch_size = batch_size

    @property
    def num_views(self) -> int:
        return 2 if self.flip else 1

    def grid(self, resolution: int) -> tuple[int, int]:
        """Token grid (h, w) for `resolution`-pixel square images."""
        return self.model.config.grid_shape(resolution, resolution)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, V, h, w) uint16 token ids (H, W multiples of the VQGAN's factor)."""
        import torch

        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
        h, w = self.model.config.grid_shape(images.shape[1], images.shape[2])
        out = np.empty((len(images), self.num_views, h, w), np.uint16)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = to_model_input(images[start : start + self.batch_size]).to(
                    self.device
                )  # (b, 3, R, R)
                if self.flip:
                    chunk = torch.cat([chunk, chunk.flip(-1)])  # one forward for both views: (2b, 3, R, R)
                ids = self.model.encode_to_indices(chunk).to("cpu", torch.int32).numpy()  # (b·V, h, w)
                count = len(ids) // self.num_views
                out[start : start + count] = ids.reshape(self.num_views, count, h, w).transpose(1, 0, 2, 3)
        return out

    def device_name(self) -> str:
        """The device this instance encodes on ("cpu", "cuda:0"): what a Ray actor of it reports."""
        if self.device.type == "cpu":
            return "cpu"
        return f"{self.device.type}:{self.device.index or 0}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Replace `batch["images"]` (B, R, R, 3) uint8 by `batch["tokens"]` (B, V, h, w) uint16.

        Other entries (labels, ids, a shard index, ...) pass through unchanged; the tokenize job's
        actors call this on each prepared shard.
        """
        result = {key: value for key, value in batch.items() if key != "images"}
        result["tokens"] = self.encode(np.asarray(batch["images"]))
        return result
