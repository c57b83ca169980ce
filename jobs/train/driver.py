"""`maskgit train`: the masked transformer trained with DeepSpeed ZeRO on streamed tokens, as a Ray job.

The driver checks the token store against the model config (codebook size, grid, classes) before any
worker starts, runs a Ray Train `TorchTrainer` whose workers each run one DeepSpeed engine
(`jobs.train.worker.train_loop`), and at the end exports the weights in our folder format (EMA weights
when the run kept an EMA) next to the run's metrics and loss curve. The same command works embedded
(a local Ray is started) and through `ray job submit -- maskgit train ...` on a running cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from typing import NamedTuple

from jobs.node_paths import WorkerPath, check_worker_paths
from jobs.options import (
    add_ray_address_argument,
    add_sampling_arguments,
    add_storage_options_argument,
    options_from_args,
    parse_storage_options,
    prefixed_values,
    sampling_overrides,
)
from jobs.ray_session import ray_session
from jobs.train.config import TrainJobConfig
from jobs.train.deepspeed_config import LR_SCHEDULES, OptimizerSettings

logger = logging.getLogger(__name__)


class TrainSummary(NamedTuple):
    """Where a finished run left its results."""

    steps: int
    export_dir: str
    run_dir: str
    checkpoint_dir: str


def check_store_matches_model(config: TrainJobConfig):
    """Open the token store and check it against the model config; returns the store's manifest.

    Raises:
        ValueError: the store is unreachable or not a token store, or its codebook size, grid or
            number of classes does not fit the model.
    """
    from jobs.train.worker import model_config_for
    from pipeline.store import StoreError, open_token_store

    model = model_config_for(config)
    try:
        manifest = open_token_store(config.store, config.storage_options).manifest
    except StoreError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the token store at {config.store}: {error}") from None
    except Exception as error:  # botocore connection errors and the like: name the store, not a traceback
        raise ValueError(
            f"cannot reach the token store at {config.store}: {type(error).__name__}: {error}"
        ) from None
    problems = []
    if manifest.codebook_size != model.codebook_size:
        family = manifest.tokenizer.get("config", {}).get("family", "vqgan")
        problems.append(
            f"codebook size {manifest.codebook_size} in the store (made by a {family} tokenizer) vs "
            f"{model.codebook_size} in the model (--codebook-size, or a preset made for that tokenizer)"
        )
    if tuple(manifest.grid) != (model.grid_size, model.grid_size):
        problems.append(
            f"token grid {tuple(manifest.grid)} in the store vs {model.grid_size}² in the model (--grid-size)"
        )
    if len(manifest.class_names) > model.num_classes:
        problems.append(
            f"{len(manifest.class_names)} classes in the store vs {model.num_classes} in the model "
            "(--num-classes)"
        )
    if problems:
        raise ValueError(
            f"token store {config.store} does not fit model preset {config.preset!r}: " + "; ".join(problems)
        )
    if manifest.num_samples < config.global_batch_size:
        raise ValueError(
            f"token store {config.store} holds {manifest.num_samples} samples, fewer than one global batch "
            f"({config.global_batch_size})"
        )
    return manifest


def check_tokenizer_fits(config: TrainJobConfig, manifest) -> None:
    """The `--tokenizer` that decodes sample grids (read from its path or URL here, before any worker
    starts) must fit the model; a tokenizer other than the store's is logged.

    Raises:
        FileNotFoundError: nothing at `--tokenizer`.
        ValueError: its family differs from the store's tokenizer, or its codebook from the model's.
    """
    from generation import check_compatible
    from jobs.train.worker import model_config_for
    from pipeline.tokenize import tokenizer_identity
    from tokenizer.families import tokenizer_config_from_dict

    try:
        identity = tokenizer_identity(config.tokenizer, config.storage_options or None)
    except FileNotFoundError:
        raise FileNotFoundError(f"--tokenizer {config.tokenizer} does not exist") from None
    tokenizer_config = tokenizer_config_from_dict(identity["config"])
    store_family = manifest.tokenizer.get("config", {}).get("family", "vqgan")
    if tokenizer_config.family != store_family:
        raise ValueError(
            f"--tokenizer {config.tokenizer} is a {tokenizer_config.family} tokenizer but the store "
            f"{config.store} was made by a {store_family} tokenizer: pass the tokenizer that made the store"
        )
    check_compatible(model_config_for(config), tokenizer_config)
    stored = manifest.tokenizer.get("weights_sha256")
    if stored and stored != identity["weights_sha256"]:
        # A warning, not an error: the same weights in another file format (a converted taming
        # checkpoint) have another digest.
        logger.warning(
            "--tokenizer %s (weights sha256 %s…) is not the file that tokenized the store %s (%s…); "
            "sample grids are only meaningful if it holds the same weights",
            config.tokenizer, identity["weights_sha256"][:12], config.store, stored[:12],
        )  # fmt: skip


def worker_paths(config: TrainJobConfig) -> list[WorkerPath]:
    """What every training worker reads (store, tokenizer) and writes (run folder, checkpoints)."""
    return [
        WorkerPath("--store", config.store),
        WorkerPath("--tokenizer", config.tokenizer),
        WorkerPath("--out", config.out, writes=True),
        WorkerPath("--checkpoint-dir", config.checkpoint_dir, writes=True),
    ]


def run_training(config: TrainJobConfig, *, ray_address: str | None = None) -> TrainSummary:
    """Train (or resume) a run and export its weights; returns where the results are.

    Args:
        config: the run's settings (they travel to every worker).
        ray_address: cluster to join (see `jobs.ray_session`; None: $RAY_ADDRESS, else a local Ray).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs.train.export import export_checkpoint
    from jobs.train.worker import model_config_for, train_loop
    from transformer.config import stored_sampling_config

    stored_sampling_config(config.sampling)  # bad sampling defaults fail before any worker starts
    if config.sample_every and not config.tokenizer:
        raise ValueError("--sample-every needs --tokenizer (the VQGAN that decodes the sample grids)")
    manifest = check_store_matches_model(config)
    if config.tokenizer:
        check_tokenizer_fits(config, manifest)
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name="maskgit-train-" + hashlib.sha256(config.out.encode()).hexdigest()[:10],
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    with ray_session(ray_address, dashboard=True):
        check_worker_paths(worker_paths(config))  # before any worker builds its engine
        trainer.fit()
    export_dir = f"{config.out.rstrip('/')}/export"
    # The store's class names travel with the weights; classes the store lacks are named by their id.
    num_classes = model_config_for(config).num_classes
    names = tuple(manifest.class_names[:num_classes]) + tuple(
        str(i) for i in range(len(manifest.class_names), num_classes)
    )
    export_checkpoint(
        config.checkpoint_uri, export_dir, storage_options=config.storage_options, class_names=names
    )
    return TrainSummary(
        steps=config.steps, export_dir=export_dir, run_dir=config.out, checkpoint_dir=config.checkpoint_uri
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainJobConfig(store="", out="")
    opt = OptimizerSettings()
    parser = subparsers.add_parser(
        "train",
        help="train the masked transformer with DeepSpeed ZeRO on a token store (Ray Train job)",
        description="Train MaskGIT's bidirectional transformer on a token store with Ray Train + DeepSpeed. "
        "Resumes from the latest checkpoint of the run automatically; exports the weights at the end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--store", required=True, help="token store URL (local path or s3://...)")
    parser.add_argument("--out", required=True, help="run directory (local path or s3://...)")
    parser.add_argument(
        "--checkpoint-dir", default=None, help="checkpoints location (default: OUT/checkpoints)"
    )
    add_storage_options_argument(parser)
    add_ray_address_argument(parser)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset", default=defaults.preset,
        help="transformer preset of either family: maskgit-imagenet256, tiny, ... (v1, MaskTransformer) or "
        "halton-imagenet256-base, halton-tiny, ... (v2, Halton transformer)",
    )  # fmt: skip
    for flag, field, kind in (
        ("--codebook-size", "codebook_size", int),
        ("--grid-size", "grid_size", int),
        ("--num-classes", "num_classes", int),
        ("--hidden-size", "hidden_size", int),
        ("--depth", "depth", int),
        ("--num-heads", "num_heads", int),
        ("--mlp-size", "mlp_size", int),
        ("--dropout", "dropout", float),
    ):
        model.add_argument(
            flag, dest=f"model_{field}", type=kind, default=None, help=f"override the preset's {field}"
        )
    scale = parser.add_argument_group("scale")
    scale.add_argument(
        "--workers", dest="num_workers", type=int, default=defaults.num_workers, help="Ray Train workers"
    )
    scale.add_argument(
        "--gpu", dest="use_gpu", action="store_true", help="one GPU per worker (nccl); default CPU (gloo)"
    )
    scale.add_argument("--cpus-per-worker", type=float, default=defaults.cpus_per_worker)
    scale.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=defaults.zero_stage)
    scale.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision)
    scale.add_argument("--global-batch-size", type=int, default=defaults.global_batch_size)
    scale.add_argument("--micro-batch-size", type=int, default=defaults.micro_batch_size, help="per worker")
    scale.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    scale.add_argument("--max-failures", type=int, default=defaults.max_failures)
    recipe = parser.add_argument_group("recipe (reference defaults)")
    # dest optimizer_<field>: the OptimizerSettings fields (`options_from_args(..., prefix="optimizer_")`)
    recipe.add_argument("--lr", dest="optimizer_lr", type=float, default=opt.lr)
    recipe.add_argument("--betas", dest="optimizer_betas", type=float, nargs=2, default=opt.betas)
    recipe.add_argument("--weight-decay", dest="optimizer_weight_decay", type=float, default=opt.weight_decay)
    recipe.add_argument("--grad-clip", dest="optimizer_grad_clip", type=float, default=opt.grad_clip)
    recipe.add_argument("--warmup-steps", dest="optimizer_warmup_steps", type=int, default=opt.warmup_steps)
    recipe.add_argument(
        "--lr-schedule", dest="optimizer_schedule", choices=LR_SCHEDULES, default=opt.schedule
    )
    recipe.add_argument("--min-lr-ratio", dest="optimizer_min_lr_ratio", type=float, default=opt.min_lr_ratio)
    recipe.add_argument(
        "--mask-schedule", dest="schedule", default=defaults.schedule, help="training mask-ratio schedule"
    )
    recipe.add_argument("--mask-mode", choices=("bernoulli", "exact"), default=defaults.mask_mode)
    recipe.add_argument("--loss-on", choices=("all", "masked"), default=defaults.loss_on)
    recipe.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    recipe.add_argument("--label-drop", type=float, default=defaults.label_drop)
    recipe.add_argument("--ema-decay", type=float, default=None, help="keep an EMA of the weights (exported)")
    recipe.add_argument("--seed", type=int, default=defaults.seed)
    io = parser.add_argument_group("checkpoints, logs, data")
    io.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    io.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints)
    io.add_argument("--log-every", type=int, default=defaults.log_every)
    io.add_argument(
        "--sample-every", type=int, default=defaults.sample_every, help="sample-grid period (0: end)"
    )
    io.add_argument("--tokenizer", default=None, help="VQGAN folder to decode sample grids")
    io.add_argument("--shuffle-window", type=int, default=defaults.shuffle_window)
    io.add_argument("--loader-workers", type=int, default=defaults.loader_workers)
    io.add_argument("--cache-dir", default=None, help="local shard cache (default: ~/.cache/maskgit/shards)")
    add_sampling_arguments(
        parser, title="sampling defaults exported with the weights (and used for sample grids)",
        aliases={"schedule": "--sample-schedule"}, dest_prefix="sampling_",
    )  # fmt: skip
    parser.set_defaults(run=_run)


def config_from_args(args: argparse.Namespace) -> TrainJobConfig:
    """The `TrainJobConfig` of parsed `maskgit train` flags: dests are its field names, and
    `optimizer_*` and `model_*` dests fill its nested optimizer and model overrides, and the shared
    sampling flags (`jobs.options.add_sampling_arguments`) its exported sampling defaults."""
    return options_from_args(
        TrainJobConfig,
        args,
        storage_options=parse_storage_options(args.storage_options) or {},
        optimizer=options_from_args(
            OptimizerSettings, args, prefix="optimizer_", betas=tuple(args.optimizer_betas)
        ),
        model_overrides=prefixed_values(args, "model_"),
        sampling={
            knob: value
            for knob, value in sampling_overrides(args, dest_prefix="sampling_").items()
            if value is not None
        },
    )


def _run(args: argparse.Namespace) -> int:
    summary = run_training(config_from_args(args), ray_address=args.ray_address)
    print(
        f"trained {summary.steps} steps; weights: {summary.export_dir}; metrics, loss curve and sample "
        f"grids: {summary.run_dir}; checkpoints: {summary.checkpoint_dir}"
    )
    return 0
