"""`maskgit train-tokenizer`: train a VQGAN on an image folder.

A thin adapter over `tokenizer.train`; heavy imports stay inside the run
functions so `maskgit --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.options import options_from_args

if TYPE_CHECKING:
    from tokenizer.train import TrainingSummary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainTokenizerOptions:
    """Settings of `maskgit train-tokenizer`.

    Attributes:
        data: training image folder `root/<class>/*`.
        out: output folder (vqgan/, log.jsonl, reconstructions.png, training_state.pt).
        preset: VQGAN preset (`tokenizer.config.PRESETS`: imagenet-f16-1024, tiny-f4, small-f8).
        image_size: crop side (None: the preset's resolution).
        eval_data: held-out image folder for the before/after report (None: `data`).
        eval_count: images in the report and the reconstruction grid.
        flip: horizontal-flip augmentation.
        resume: continue `out/training_state.pt` when present.
        progress: show a progress bar.
        steps … checkpoint_every: `TokenizerTrainingConfig` fields; None keeps that config's default.
    """

    data: str
    out: str
    preset: str
    image_size: int | None = None
    eval_data: str | None = None
    eval_count: int = 16
    flip: bool = True
    resume: bool = False
    progress: bool = True
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    disc_start: int | None = None
    disc_weight: float | None = None
    perceptual: str | None = None
    perceptual_weight: float | None = None
    lpips_weights: str | None = None
    vgg_weights: str | None = None
    reconstruction: str | None = None
    dead_code_restart: int | None = None
    precision: str | None = None
    device: str | None = None
    seed: int | None = None
    num_workers: int | None = None
    log_every: int | None = None
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.eval_count <= 0:
            raise ValueError(f"--eval-count must be positive, got {self.eval_count}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train-tokenizer` subcommand; every flag's dest is a `TrainTokenizerOptions` field."""
    train = subparsers.add_parser(
        "train-tokenizer",
        help="train a VQGAN on an image folder (root/<class>/*.png|jpg)",
        description="taming's VQGAN recipe (L1/L2 + perceptual + PatchGAN + VQ losses) in one process, "
        "GPU when present. Writes OUT/vqgan (our format), OUT/log.jsonl, OUT/reconstructions.png and a "
        "resumable OUT/training_state.pt.",
    )
    train.add_argument("--data", required=True, help="training image folder root/<class>/*")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--preset", required=True, help="VQGAN preset (imagenet-f16-1024, tiny-f4, small-f8)")
    train.add_argument("--steps", type=int, default=None, help="total steps (default 10000)")
    train.add_argument("--batch-size", type=int, default=None, help="images per step (default 12)")
    train.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 4.5e-6 x 12)")
    train.add_argument("--image-size", type=int, default=None, help="crop side (default: preset resolution)")
    train.add_argument("--disc-start", type=int, default=None, help="first GAN step (default steps/2)")
    train.add_argument("--disc-weight", type=float, default=None, help="adaptive GAN weight scale (0.8)")
    train.add_argument("--perceptual", choices=("efficientnet", "lpips", "none"), default=None)
    train.add_argument("--perceptual-weight", type=float, default=None, help="default 1.0")
    train.add_argument("--lpips-weights", help="lpips package weights/v0.1/vgg.pth (for --perceptual lpips)")
    train.add_argument("--vgg-weights", help="torchvision-layout VGG16 state dict (for --perceptual lpips)")
    train.add_argument("--reconstruction", choices=("l1", "l2"), default=None, help="pixel loss (l1)")
    train.add_argument("--dead-code-restart", type=int, default=None, help="restart interval, 0 = off")
    train.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16 = autocast")
    train.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (0)")
    train.add_argument("--log-every", type=int, default=None)
    train.add_argument("--checkpoint-every", type=int, default=None)
    train.add_argument("--eval-data", help="held-out image folder for the before/after report")
    train.add_argument("--eval-count", type=int, default=16, help="images in the report and grid")
    train.add_argument(
        "--no-flip", dest="flip", action="store_false", help="no horizontal-flip augmentation"
    )
    train.add_argument("--resume", action="store_true", help="continue OUT/training_state.pt if present")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    train.set_defaults(run=_run)


# The options that are TokenizerTrainingConfig fields (None: that config's default).
_TRAINING_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "disc_start",
    "disc_weight",
    "perceptual",
    "perceptual_weight",
    "lpips_weights",
    "vgg_weights",
    "reconstruction",
    "dead_code_restart",
    "precision",
    "device",
    "seed",
    "num_workers",
    "log_every",
    "checkpoint_every",
)


def run_train_tokenizer(options: TrainTokenizerOptions) -> TrainingSummary:
    """Train (or resume) a VQGAN on an image folder; returns `tokenizer.train`'s summary.

    Raises:
        ValueError: an unknown preset, or an image size that is not a multiple of its factor.
        FileNotFoundError: a missing image folder.
    """
    import numpy as np
    import torch

    from pipeline.image_dataset import ImageFolderDataset
    from tokenizer.config import preset
    from tokenizer.train import TokenizerTrainingConfig, train_tokenizer

    vqgan = preset(options.preset)
    image_size = options.image_size or vqgan.resolution
    vqgan.grid_shape(image_size, image_size)  # ValueError when not a multiple of the factor
    overrides = {name: getattr(options, name) for name in _TRAINING_FIELDS}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    config = TokenizerTrainingConfig(vqgan=vqgan, grid_images=options.eval_count, **overrides)
    dataset = ImageFolderDataset(options.data, image_size, random_crop=True, horizontal_flip=options.flip)
    eval_source = ImageFolderDataset(
        options.eval_data or options.data, image_size, random_crop=False, horizontal_flip=False
    )
    # Evenly spaced picks: the listing is sorted by class, so the first N would all be one class.
    count = min(options.eval_count, len(eval_source))
    picks = np.linspace(0, len(eval_source) - 1, count).round().astype(int)
    eval_images = torch.stack([eval_source[int(i)][0] for i in picks])
    logger.info(
        "training %s on %d images (%d classes) at %d px for %d steps",
        options.preset,
        len(dataset),
        len(dataset.classes),
        image_size,
        config.steps,
    )
    summary = train_tokenizer(
        config,
        dataset,
        options.out,
        eval_images=eval_images,
        resume=options.resume,
        progress=options.progress,
    )
    if dataset.rejected:
        logger.warning("%d unreadable images were skipped: %s", len(dataset.rejected), dataset.rejected[:5])
    return summary


def _run(args: argparse.Namespace) -> int:
    summary = run_train_tokenizer(options_from_args(TrainTokenizerOptions, args))
    before, after = summary.initial, summary.final
    print(
        f"steps {summary.start_step} -> {summary.steps} in {summary.seconds:.0f} s\n"
        f"reconstruction MSE {before.mse:.4f} -> {after.mse:.4f}, "
        f"PSNR {before.psnr:.2f} -> {after.psnr:.2f} dB\n"
        f"codebook used {after.codebook_fraction_used:.1%}, perplexity {after.perplexity:.1f}\n"
        f"model {summary.model_dir}\ngrid {summary.grid_path}\nlog {summary.log_path}"
    )
    return 0
