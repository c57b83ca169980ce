"""`maskgit train-tokenizer`: train a VQGAN on an image folder.

A thin adapter over `tokenizer.train`; heavy imports stay inside the run
functions so `maskgit --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train-tokenizer` subcommand."""
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
    train.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    train.add_argument("--resume", action="store_true", help="continue OUT/training_state.pt if present")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)


# CLI flag -> TokenizerTrainingConfig field, for flags whose default defers to the config's default.
_TRAINING_FLAGS = (
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


def run_train(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pipeline.image_dataset import ImageFolderDataset
    from tokenizer.config import preset
    from tokenizer.train import TokenizerTrainingConfig, train_tokenizer

    vqgan = preset(args.preset)
    image_size = args.image_size or vqgan.resolution
    vqgan.grid_shape(image_size, image_size)  # ValueError when not a multiple of the factor
    overrides = {name: getattr(args, name) for name in _TRAINING_FLAGS if getattr(args, name) is not None}
    config = TokenizerTrainingConfig(vqgan=vqgan, grid_images=args.eval_count, **overrides)
    dataset = ImageFolderDataset(args.data, image_size, random_crop=True, horizontal_flip=not args.no_flip)
    eval_source = ImageFolderDataset(
        args.eval_data or args.data, image_size, random_crop=False, horizontal_flip=False
    )
    if args.eval_count <= 0:
        raise ValueError(f"--eval-count must be positive, got {args.eval_count}")
    # Evenly spaced picks: the listing is sorted by class, so the first N would all be one class.
    picks = np.linspace(0, len(eval_source) - 1, min(args.eval_count, len(eval_source))).round().astype(int)
    eval_images = torch.stack([eval_source[int(i)][0] for i in picks])
    logger.info(
        "training %s on %d images (%d classes) at %d px for %d steps",
        args.preset,
        len(dataset),
        len(dataset.classes),
        image_size,
        config.steps,
    )
    summary = train_tokenizer(
        config, dataset, args.out, eval_images=eval_images, resume=args.resume, progress=not args.no_progress
    )
    if dataset.rejected:
        logger.warning("%d unreadable images were skipped: %s", len(dataset.rejected), dataset.rejected[:5])
    before, after = summary.initial, summary.final
    print(
        f"steps {summary.start_step} -> {summary.steps} in {summary.seconds:.0f} s\n"
        f"reconstruction MSE {before.mse:.4f} -> {after.mse:.4f}, "
        f"PSNR {before.psnr:.2f} -> {after.psnr:.2f} dB\n"
        f"codebook used {after.codebook_fraction_used:.1%}, perplexity {after.perplexity:.1f}\n"
        f"model {summary.model_dir}\ngrid {summary.grid_path}\nlog {summary.log_path}"
    )
    return 0
