"""How good a tokenizer is on a set of images: reconstruction error, PSNR, codebook usage, a PNG grid.

MSE is measured on the model's [-1, 1] scale with the reconstruction clamped to [-1, 1] (what a viewer
sees); PSNR uses that scale's peak-to-peak range 2, i.e. PSNR = 10·log10(4 / MSE), which equals the usual
PSNR of [0, 1] (or 0..255) images. The grid is written with PIL so this package needs nothing of ours.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from tokenizer.codebook import code_counts, usage_from_counts
from tokenizer.vqgan import VQGAN


class ReconstructionReport(NamedTuple):
    """Reconstruction quality of a tokenizer on a set of images."""

    mse: float  # mean squared error on the [-1, 1] scale
    psnr: float  # dB
    codebook_fraction_used: float  # share of the K codes that occur
    perplexity: float  # exp(entropy) of the code histogram
    num_images: int

    def as_dict(self) -> dict[str, float]:
        return self._asdict()


class MeasuredReconstruction(NamedTuple):
    """`measure_reconstruction`'s result: the report and the reconstructions it was computed from."""

    report: ReconstructionReport
    reconstructions: torch.Tensor  # (N, C, H, W) clamped to [-1, 1], on the CPU


@torch.no_grad()
def measure_reconstruction(
    model: VQGAN, images: torch.Tensor, *, batch_size: int = 64
) -> MeasuredReconstruction:
    """Tokenize and detokenize `images` and compare.

    Args:
        model: the tokenizer (its train/eval mode is restored afterwards).
        images: (N, C, H, W) float in [-1, 1].
        batch_size: images per forward pass.

    Returns:
        The report and the reconstructions.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    squared_error, counts, outputs = 0.0, torch.zeros(model.config.codebook_size, dtype=torch.long), []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            indices = model.encode_to_indices(batch)  # (b, h, w)
            reconstruction = model.decode_from_indices(indices).float().clamp(-1, 1)
            squared_error += float((reconstruction - batch.float()).pow(2).sum())
            counts += code_counts(indices.cpu(), counts.numel())
            outputs.append(reconstruction.cpu())
    finally:
        model.train(was_training)
    mse = squared_error / max(images.numel(), 1)
    psnr = 10.0 * math.log10(4.0 / mse) if mse > 0 else float("inf")
    usage = usage_from_counts(counts)
    report = ReconstructionReport(mse, psnr, usage.fraction_used, usage.perplexity, int(images.shape[0]))
    reconstructions = torch.cat(outputs) if outputs else images.new_zeros((0, *images.shape[1:]))
    return MeasuredReconstruction(report, reconstructions)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, 3) uint8 (greyscale repeated)."""
    array = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
    array = array.permute(0, 2, 3, 1).numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def save_reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike, *, columns: int = 8
) -> Path:
    """Write a PNG whose rows alternate originals and their reconstructions.

    Args:
        originals, reconstructions: (N, C, H, W) in [-1, 1], same shape.
        path: output PNG.
        columns: images per row.
    """
    if originals.shape != reconstructions.shape:
        raise ValueError(f"shape mismatch: {tuple(originals.shape)} vs {tuple(reconstructions.shape)}")
    top, bottom = _to_uint8(originals), _to_uint8(reconstructions)
    count, height, width, _ = top.shape
    columns = max(1, min(columns, count))
    pad, pairs = 2, -(-count // columns)
    grid = np.full((2 * pairs * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for index in range(count):
        pair, col = divmod(index, columns)
        left = pad + col * (width + pad)
        for offset, source in enumerate((top, bottom)):
            row_top = pad + (2 * pair + offset) * (height + pad)
            grid[row_top : row_top + height, left : left + width] = source[index]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
