"""`maskgit fid-stats`: reference statistics of an image set for FID and precision/recall, as one `.npz`.

Streams an image folder tree, WebDataset tars or Parquet with image bytes (local or s3://) through
`pipeline.sources` (decode, short-side resize + center crop to `--resolution`, the reference's
evaluation transform) and an evaluator (`evaluation.features`) into a float64 mean and covariance
plus a bounded random subset of features (`evaluation.stats`). Nothing but one batch of images is
held in memory. The file records the evaluator, its preprocessing (including `--minmax-stretch`),
the resolution and the source, so `maskgit evaluate` refuses to compare it with other features.

The sources' readers take labelled data (a class folder per image, a `cls` entry per tar sample, a
label column in Parquet), as the tokenizer job does; unlabelled inputs are skipped as rejects.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from evaluation.features import EVALUATORS
from jobs.options import add_storage_options_argument, options_from_args
from storage.filesystem import open_file

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FidStatsOptions:
    """Settings of `maskgit fid-stats`.

    Attributes:
        source: image folder tree, WebDataset tars or Parquet (local or s3://).
        out: `.npz` to write (local or s3://).
        evaluator: "efficientnet-lite0" or "inception".
        inception_weights: the TF-FID InceptionV3 weights file (for "inception").
        resolution: side after short-side resize + center crop (the model's image size).
        minmax_stretch: the reference's per-image stretch before the evaluator.
        input_format: "folder" | "webdataset" | "parquet"; None detects it.
        limit: use at most this many images (the first of the sorted listing).
        max_kept: features kept for precision/recall (a uniform random subset).
        batch_size: images read and featurised together.
        device: torch device (None: CUDA when available).
        storage_options: fsspec options (None: the AWS environment).
        progress: show a progress bar.
    """

    source: str
    out: str
    evaluator: str = "efficientnet-lite0"
    inception_weights: str | None = None
    resolution: int = 256
    minmax_stretch: bool = False
    input_format: str | None = None
    limit: int | None = None
    max_kept: int = 50_000
    batch_size: int = 256
    device: str | None = None
    storage_options: dict[str, Any] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.evaluator not in EVALUATORS:
            raise ValueError(f"--evaluator must be one of {EVALUATORS}, got {self.evaluator!r}")
        for name in ("resolution", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"--limit must be >= 2, got {self.limit}")


def run_fid_stats(options: FidStatsOptions):
    """Stream `options.source` through the evaluator into a statistics `.npz` at `options.out`.

    Returns:
        The FeatureStatistics written.

    Raises:
        FileNotFoundError: no source, or no Inception weights file.
        ValueError: fewer than 2 usable images, or bad settings.
    """
    from tqdm import tqdm

    from evaluation.features import build_feature_extractor
    from evaluation.stats import StatisticsAccumulator
    from pipeline.sources import plan_sources, prepare_shard

    so = options.storage_options
    evaluator = build_feature_extractor(
        options.evaluator,
        inception_weights=options.inception_weights,
        minmax_stretch=options.minmax_stretch,
        device=options.device,
    )
    plan = plan_sources(
        options.source, input_format=options.input_format, shard_size=options.batch_size, storage_options=so
    )
    # num_inputs counts images for folders and Parquet, but tars for WebDataset.
    known = plan.num_inputs if plan.input_format != "webdataset" else None
    limit = options.limit or known or float("inf")
    accumulator = StatisticsAccumulator(evaluator.info.feature_dim, max_kept=options.max_kept)
    rejects = 0
    bar_total = min(limit, known) if known else options.limit
    with tqdm(total=bar_total, desc="fid-stats", unit="img", disable=not options.progress) as bar:
        for task in plan.tasks:
            if accumulator.count >= limit:
                break
            shard = prepare_shard(task, options.resolution, storage_options=so)
            rejects += len(shard.rejects)
            images = shard.images[: int(min(len(shard.images), limit - accumulator.count))]  # (n, R, R, 3)
            if len(images):
                accumulator.update(evaluator(images).features)
            bar.update(len(images))
    if accumulator.count < 2:
        raise ValueError(
            f"{options.source}: {accumulator.count} usable images ({rejects} rejected); need >= 2"
        )
    if rejects:
        log.warning("%d inputs of %s could not be read as images and were skipped", rejects, options.source)
    stats = accumulator.finalize(
        evaluator_info=evaluator.info.to_dict(),
        minmax_stretch=options.minmax_stretch,
        resolution=options.resolution,
        source=f"{plan.input_format}:{options.source} ({accumulator.count} images, {rejects} rejected)",
    )
    with open_file(options.out, "wb", so) as handle:
        stats.save(handle)
    return stats


def add_evaluator_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluator flags shared by `fid-stats` and `evaluate`."""
    parser.add_argument(
        "--evaluator",
        choices=EVALUATORS,
        default="efficientnet-lite0",
        help="inception: TF-FID InceptionV3, needs --inception-weights (comparable with published FID); "
        "efficientnet-lite0: offline, labelled FID-EffLite0 (not comparable with published FID)",
    )
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="path of pt_inception-2015-12-05-6726825d.pth (pytorch-fid / torch-fidelity release)",
    )
    parser.add_argument(
        "--minmax-stretch",
        action="store_true",
        help="the reference's quirk: stretch each image to the full [0, 255] range before the evaluator",
    )
    add_storage_options_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def _run_cli(args: argparse.Namespace) -> int:
    stats = run_fid_stats(options_from_args(FidStatsOptions, args))
    print(
        f"wrote {args.out}: {stats.count} images, evaluator {stats.evaluator}, "
        f"minmax_stretch={stats.minmax_stretch}, {len(stats.kept_features)} features kept"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fid-stats` subcommand; every flag's dest is a `FidStatsOptions` field."""
    parser = subparsers.add_parser(
        "fid-stats",
        help="reference statistics (mean, covariance, features) of an image set, to .npz",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--source", required=True, help="image folder tree, WebDataset tars or Parquet")
    parser.add_argument("--out", required=True, help=".npz to write (local or s3://)")
    parser.add_argument("--resolution", type=int, default=256, help="short side resize + center crop")
    parser.add_argument("--input-format", choices=("folder", "webdataset", "parquet"), default=None)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    parser.add_argument("--max-kept", type=int, default=50_000, help="features kept for precision/recall")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_evaluator_arguments(parser)
    parser.set_defaults(run=_run_cli)


__all__ = ["FidStatsOptions", "add_evaluator_arguments", "register", "run_fid_stats"]
