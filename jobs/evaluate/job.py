"""`maskgit evaluate`: a resumable Ray job that samples a model and measures it the reference's way.

The reference protocol (docs/reference.md#evaluation): `--per-class` samples of every class (50 → 50k for
ImageNet), then FID, IS (10 splits) and k-NN precision/recall/density/coverage (k = 3) against
reference statistics made by `maskgit fid-stats`:

    driver: plan shards of the class-major sample list; pin the settings in <out>/plan.json
    Ray actors (`--workers`; each loads transformer, VQGAN and evaluator once), per pending shard:
        log an attempt -> transformer.sample -> VQGAN decode -> samples/shard-k.npz + commit marker
        -> evaluator -> features/<evaluator>/shard-k.npz + commit marker
    driver: gather features -> evaluation.scoring -> report.json, report.md, samples.png

Sample i of the plan uses seed `--seed + i`, so results do not depend on shard size, worker count or
interruptions. A rerun skips every shard whose commit marker exists (a killed run loses only the
shards in flight) and only computes missing features, e.g. for another evaluator. The report names
the evaluator and the sampling settings next to every number (evaluation.report).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from typing import Any, NamedTuple

import numpy as np

from evaluation.metrics import FID_SQRT_METHODS
from jobs.evaluate.options import EvaluateOptions
from jobs.node_paths import WorkerPath, check_worker_paths
from jobs.options import add_ray_address_argument, seed_argument
from jobs.ray_session import ray_session
from storage.filesystem import url_to_fs

GRID_CLASSES, GRID_PER_CLASS = 10, 8


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """What the driver works out before sampling: local model paths, settings, the plan's labels."""

    transformer: str
    tokenizer: str
    image_size: int
    sampling: dict[str, Any]
    classes: list[int]
    plan: dict[str, Any]


class _EvaluateWorker:
    """Ray actor: samples shards and computes their features; the models are loaded once."""

    def __init__(self, options: EvaluateOptions, resolved: _Resolved, run_id: str):
        import ray
        import torch

        from evaluation.features import build_feature_extractor
        from evaluation.sample_store import SampleStore
        from generation import MaskGIT
        from transformer import SamplingConfig

        cuda = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self.device = torch.device("cuda" if cuda else "cpu")
        if not cuda:
            torch.set_num_threads(
                options.threads_per_worker or max(1, (os.cpu_count() or 1) // options.workers)
            )
        self.options, self.run_id = options, run_id
        self.sampling = SamplingConfig.from_dict(resolved.sampling)
        # Read from the URLs on this worker: a path local to the driver may not exist on its node.
        self.pipe = MaskGIT.load(
            options.transformer, options.tokenizer, device=self.device, bf16=options.precision == "bf16",
            storage_options=options.storage_options,
        )  # fmt: skip
        self.evaluator = build_feature_extractor(
            options.evaluator,
            inception_weights=options.inception_weights,
            minmax_stretch=options.minmax_stretch,
            device=self.device,
        )
        self.store = SampleStore(*url_to_fs(options.output, options.storage_options))

    def _sample(self, class_ids: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 images of the given classes, sample j drawn with seeds[j]."""
        result = self.pipe.generate(
            class_ids, seeds=seeds.tolist(), sampling=self.sampling, batch_size=self.options.batch_size
        )
        return result.images

    def run_shard(self, index: int, start: int, labels: np.ndarray, needs_samples: bool) -> int:
        """Sample shard `index` (unless committed), then compute and commit its features."""
        from evaluation.sample_store import FeatureShard, SampleShard

        if needs_samples:
            attempt = uuid.uuid4().hex[:12]
            self.store.record_attempt(index, self.run_id, attempt, pid=os.getpid())
            indices = np.arange(start, start + len(labels), dtype=np.int64)
            seeds = self.options.seed + indices
            shard = SampleShard(self._sample(labels, seeds), labels, seeds, indices)
            self.store.write_samples(index, shard, run=self.run_id, attempt=attempt)
        else:
            shard = self.store.read_samples(index)
        batch = self.evaluator(shard.images)
        self.store.write_features(
            self.options.evaluator_key, index, FeatureShard(batch.features, batch.logits)
        )
        return index


def _resolve(options: EvaluateOptions) -> _Resolved:
    """Read both models' configs (from their URLs, without downloading the weights), check that they fit
    together, and pin the settings of the run."""
    from generation import check_compatible, resolve_sampling
    from pipeline.tokenize import tokenizer_identity
    from tokenizer.families import tokenizer_config_from_dict
    from transformer import load_sampling_config, read_transformer_config
    from weights import weights_digest

    so = options.storage_options
    config = read_transformer_config(options.transformer, storage_options=so)
    identity = tokenizer_identity(options.tokenizer, storage_options=so)
    image_size = check_compatible(config, tokenizer_config_from_dict(identity["config"]))
    stored = load_sampling_config(options.transformer, storage_options=so)
    sampling = resolve_sampling(stored, options.sampling).to_dict()
    classes = list(options.classes) if options.classes is not None else list(range(config.num_classes))
    if not classes or min(classes) < 0 or max(classes) >= config.num_classes:
        raise ValueError(f"--classes must lie in [0, {config.num_classes}), got {classes}")
    plan = {
        "transformer_sha256": weights_digest(options.transformer, storage_options=so),
        "tokenizer": identity,
        "sampling": sampling,
        "precision": options.precision,
        "classes": classes,
        "per_class": options.per_class,
        "seed": options.seed,
        "shard_size": options.shard_size,
    }
    return _Resolved(options.transformer, options.tokenizer, image_size, sampling, classes, plan)


def _load_reference(options: EvaluateOptions, image_size: int):
    from evaluation.stats import FeatureStatistics

    fs, path = url_to_fs(options.reference_stats, options.storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"reference statistics {options.reference_stats} not found (see fid-stats)")
    with fs.open(path, "rb") as handle:
        reference = FeatureStatistics.load(handle)
    if (reference.evaluator, reference.minmax_stretch) != (options.evaluator, options.minmax_stretch):
        raise ValueError(
            f"{options.reference_stats} was made with evaluator={reference.evaluator}, minmax_stretch="
            f"{reference.minmax_stretch}; this run uses evaluator={options.evaluator}, "
            f"minmax_stretch={options.minmax_stretch}"
        )
    if reference.resolution is not None and reference.resolution != image_size:
        raise ValueError(
            f"{options.reference_stats} holds {reference.resolution}px images but the model samples "
            f"{image_size}px; make reference statistics with --resolution {image_size}"
        )
    return reference


def _run_pending(options: EvaluateOptions, resolved: _Resolved, pending: list, labels: np.ndarray) -> None:
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    with ray_session(options.ray_address, num_cpus=options.num_cpus):
        check_worker_paths(  # the actors read the models and write the output on their own nodes
            [
                WorkerPath("--transformer", options.transformer),
                WorkerPath("--tokenizer", options.tokenizer),
                WorkerPath("--inception-weights", options.inception_weights),
                WorkerPath("--output", options.output, writes=True),
            ]
        )
        gpus = options.num_gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        run_id = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
        actor = ray.remote(num_cpus=options.num_cpus_per_worker, num_gpus=gpus)(_EvaluateWorker)
        workers = [actor.remote(options, resolved, run_id) for _ in range(min(options.workers, len(pending)))]
        done = ActorPool(workers).map_unordered(
            lambda worker, job: worker.run_shard.remote(
                job[0].index, job[0].start, labels[job[0].start : job[0].stop], job[1]
            ),
            pending,
        )
        for _ in tqdm(done, total=len(pending), desc="shards", unit="shard", disable=not options.progress):
            pass


class _Run(NamedTuple):
    """An evaluation's output folder, opened and checked against the run's settings."""

    evaluator: Any  # evaluation.features feature extractor (on the driver, for its description)
    resolved: _Resolved
    reference: Any  # evaluation.stats.FeatureStatistics
    labels: np.ndarray  # (N,) class of every planned sample, class-major
    shards: list  # evaluation.sample_store's shard plan
    store: Any  # evaluation.sample_store.SampleStore
    root: str
    filesystem: Any  # fsspec filesystem of `root`


def _open_run(options: EvaluateOptions) -> _Run:
    """Check the evaluator, models and reference statistics, then open (or begin) the output."""
    from evaluation.features import build_feature_extractor
    from evaluation.sample_store import SampleStore, class_major_labels, plan_sample_shards

    # Built here too: fails early on a missing weights file, and describes the evaluator.
    evaluator = build_feature_extractor(
        options.evaluator,
        inception_weights=options.inception_weights,
        minmax_stretch=options.minmax_stretch,
        device="cpu",
    )
    resolved = _resolve(options)
    reference = _load_reference(options, resolved.image_size)
    labels = class_major_labels(resolved.classes, options.per_class)  # (N,)
    shards = plan_sample_shards(len(labels), options.shard_size)
    fs, root = url_to_fs(options.output, options.storage_options)
    store = SampleStore(fs, root)
    store.ensure_plan(resolved.plan)
    store.ensure_evaluator(options.evaluator_key, evaluator.info.to_dict())
    return _Run(evaluator, resolved, reference, labels, shards, store, root, fs)


def _score(options: EvaluateOptions, run: _Run):
    """FID / IS / PRDC of every shard's features against the reference statistics."""
    from evaluation.scoring import score_samples

    feature_shards = [run.store.read_features(options.evaluator_key, shard.index) for shard in run.shards]
    return score_samples(
        run.reference,
        np.concatenate([s.features for s in feature_shards]),  # (N, D)
        np.concatenate([s.logits for s in feature_shards]),  # (N, C)
        evaluator_info=run.evaluator.info.to_dict(),
        minmax_stretch=options.minmax_stretch,
        is_splits=options.is_splits,
        prdc_k=options.prdc_k,
        fid_method=options.fid_method,
        seed=options.seed,
    )


def _grid_and_accuracy(options: EvaluateOptions, run: _Run, classifier) -> tuple[np.ndarray, dict[str, str]]:
    """The first classes' first samples as one (H', W', 3) grid, and the classifier's accuracy if any."""
    from pipeline.images import image_grid

    grid_images, correct = [], 0
    for shard in run.shards:
        samples = run.store.read_samples(shard.index)
        if classifier is not None:
            correct += int((classifier.predict(samples.images) == samples.class_ids).sum())
        in_grid = samples.indices % options.per_class < GRID_PER_CLASS
        grid_images.append(samples.images[in_grid & (samples.indices // options.per_class < GRID_CLASSES)])
    extra = (
        {"classifier accuracy (samples show their class)": f"{correct / len(run.labels):.4f}"}
        if classifier
        else {}
    )
    grid = image_grid(np.concatenate(grid_images), columns=min(GRID_PER_CLASS, options.per_class))
    return grid, extra


def run_evaluate(options: EvaluateOptions) -> dict:
    """Sample, featurise and score; resumes from whatever `options.output` already holds.

    Returns:
        The report record (as in report.json) plus `shards_sampled`, `shards_skipped` and `report`.

    Raises:
        FileNotFoundError: a missing model, reference statistics or Inception weights file.
        ValueError: bad settings; reference statistics of another evaluator or resolution; an output
            begun with other settings (PlanMismatchError).
    """
    from evaluation.classifier import load_classifier
    from evaluation.report import write_report
    from pipeline.images import encode_png

    classifier = load_classifier(options.classifier) if options.classifier else None
    run = _open_run(options)
    sampled, featurised = run.store.committed_samples(), run.store.committed_features(options.evaluator_key)
    pending = [(shard, shard.index not in sampled) for shard in run.shards if shard.index not in featurised]
    to_sample = sum(needs for _, needs in pending)
    print(
        f"evaluate {options.output}: {len(run.shards)} shards, {len(sampled)} already committed, "
        f"{to_sample} to sample, {len(pending)} to featurise"
    )
    if pending:
        _run_pending(options, run.resolved, pending, run.labels)
        run.store.refresh()
    grid, extra = _grid_and_accuracy(options, run, classifier)
    result = _score(options, run).to_result(
        evaluator=run.evaluator.info.to_dict(),
        reference={"path": options.reference_stats, **run.reference.describe()},
        sampling={**run.resolved.sampling, "precision": options.precision, "seed": options.seed},
        model={
            "transformer": options.transformer,
            "tokenizer": options.tokenizer,
            "image_size": run.resolved.image_size,
        },
        protocol={
            "per_class": options.per_class,
            "classes": len(run.resolved.classes),
            "is_splits": options.is_splits,
            "prdc_k": options.prdc_k,
            "fid_method": options.fid_method,
        },
        extra=extra,
    )
    written = write_report(result, run.root, filesystem=run.filesystem)
    run.filesystem.pipe(f"{run.root}/samples.png", encode_png(grid))
    record = result.to_dict()
    record.update(
        shards_sampled=to_sample, shards_skipped=len(run.shards) - to_sample, report=written.markdown_path
    )
    return record


# --- command line ---------------------------------------------------------------------------------


def _run_cli(args) -> int:
    from jobs.options import options_from_args, sampling_overrides

    options = options_from_args(
        EvaluateOptions, args, classes=tuple(args.classes) if args.classes else None,
        sampling=sampling_overrides(args),
    )  # fmt: skip
    record = run_evaluate(options)
    metrics = ", ".join(f"{name} {value:.4g}" for name, value in record["labelled_metrics"].items())
    print(
        f"{record['num_samples']} samples ({record['shards_sampled']} shards sampled, "
        f"{record['shards_skipped']} already committed): {metrics}; report {record['report']}"
    )
    return 0


def register(subparsers) -> None:
    """Add the `evaluate` subcommand; every flag's dest is an `EvaluateOptions` field (`fid-stats`,
    which makes its reference statistics, is `jobs.evaluate.fid_stats`)."""
    from jobs.evaluate import fid_stats
    from jobs.options import add_sampling_arguments

    defaults = EvaluateOptions("", "", "", "")
    parser = subparsers.add_parser(
        "evaluate",
        help="sample N images per class on Ray and report FID / IS / precision / recall (resumable)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--transformer", required=True, help="transformer folder (ours) or valeoai .pth")
    parser.add_argument("--tokenizer", required=True, help="VQGAN folder or taming checkpoint")
    parser.add_argument("--out", dest="output", required=True, help="output folder (local or s3://)")
    parser.add_argument("--reference-stats", required=True, help=".npz written by `maskgit fid-stats`")
    parser.add_argument("--per-class", type=int, default=defaults.per_class)
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="default: every class")
    parser.add_argument("--seed", type=seed_argument, default=defaults.seed, help="sample i uses seed + i")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision)
    add_sampling_arguments(parser, aliases={"steps": "--steps"})
    fid_stats.add_evaluator_arguments(parser)
    parser.add_argument(
        "--fid-method",
        choices=FID_SQRT_METHODS,
        default=defaults.fid_method,
        help="sqrtm: scipy.linalg.sqrtm as the reference; eigh: the same trace, faster on CPU",
    )
    parser.add_argument("--is-splits", type=int, default=defaults.is_splits)
    parser.add_argument("--prdc-k", type=int, default=defaults.prdc_k)
    parser.add_argument("--classifier", default=None, help="classifier folder: report class accuracy")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--num-cpus-per-worker", type=float, default=defaults.num_cpus_per_worker)
    parser.add_argument("--num-gpus-per-worker", type=float, default=None, help="default: 1 if GPUs exist")
    parser.add_argument("--threads-per-worker", type=int, default=None)
    add_ray_address_argument(parser)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    parser.set_defaults(run=_run_cli)


__all__ = ["EvaluateOptions", "register", "run_evaluate"]
