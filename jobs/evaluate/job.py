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
import hashlib
import os
import time
import uuid
from typing import Any

import numpy as np

from evaluation.metrics import FID_SQRT_METHODS
from jobs.evaluate.options import SAMPLING_KNOBS, EvaluateOptions
from pipeline.object_store import url_to_fs

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
        from tokenizer import load_vqgan
        from transformer import load_transformer

        cuda = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self.device = torch.device("cuda" if cuda else "cpu")
        if not cuda:
            torch.set_num_threads(
                options.threads_per_worker or max(1, (os.cpu_count() or 1) // options.workers)
            )
        self.options, self.sampling, self.run_id = options, resolved.sampling, run_id
        self.model = load_transformer(resolved.transformer, map_location=self.device)
        self.vqgan = load_vqgan(resolved.tokenizer, map_location=self.device)
        self.evaluator = build_feature_extractor(
            options.evaluator,
            inception_weights=options.inception_weights,
            minmax_stretch=options.minmax_stretch,
            device=self.device,
        )
        self.store = SampleStore(*url_to_fs(options.output, options.storage_options))

    def _sample(self, class_ids: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 images of the given classes, sample j drawn with seeds[j]."""
        import contextlib

        import torch

        from pipeline.images import to_uint8_images
        from transformer import sample

        bf16 = self.options.precision == "bf16"
        images = []
        for start in range(0, len(seeds), self.options.batch_size):
            part = slice(start, start + self.options.batch_size)
            autocast = (
                torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            )
            with torch.no_grad(), autocast:
                ids, batch_seeds = torch.as_tensor(np.array(class_ids[part])), seeds[part].tolist()
                tokens = sample(self.model, ids, seeds=batch_seeds, **self.sampling).tokens  # (b, h, w)
                images.append(to_uint8_images(self.vqgan.decode_from_indices(tokens)))  # (b, H, W, 3)
        return np.concatenate(images)

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


def _file_sha256(path: str) -> str:
    path = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve(options: EvaluateOptions) -> _Resolved:
    from pipeline.tokenize import local_tokenizer_path, tokenizer_identity
    from tokenizer import VQGANConfig
    from transformer import SamplingConfig, load_sampling_config, read_transformer_config

    so = options.storage_options
    transformer = local_tokenizer_path(options.transformer, so)  # generic: a local copy of a remote path
    tokenizer = local_tokenizer_path(options.tokenizer, so)
    config = read_transformer_config(transformer)
    identity = tokenizer_identity(tokenizer)
    image_size = config.grid_size * VQGANConfig.from_dict(identity["config"]).downsample_factor
    overrides = {
        knob: getattr(options, knob) for knob in SAMPLING_KNOBS if getattr(options, knob) is not None
    }
    sampling = SamplingConfig(**{**load_sampling_config(transformer).to_dict(), **overrides}).as_kwargs()
    classes = list(options.classes) if options.classes is not None else list(range(config.num_classes))
    if not classes or min(classes) < 0 or max(classes) >= config.num_classes:
        raise ValueError(f"--classes must lie in [0, {config.num_classes}), got {classes}")
    plan = {
        "transformer_sha256": _file_sha256(transformer),
        "tokenizer": identity,
        "sampling": sampling,
        "precision": options.precision,
        "classes": classes,
        "per_class": options.per_class,
        "seed": options.seed,
        "shard_size": options.shard_size,
    }
    return _Resolved(transformer, tokenizer, image_size, sampling, classes, plan)


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

    owns_ray = not ray.is_initialized()
    if owns_ray:
        address = options.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else options.num_cpus, include_dashboard=False)
    try:
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
    finally:
        if owns_ray:
            ray.shutdown()


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
    from evaluation.features import build_feature_extractor
    from evaluation.report import write_report
    from evaluation.sample_store import SampleStore, class_major_labels, plan_sample_shards
    from evaluation.scoring import score_samples
    from pipeline.images import encode_png, image_grid

    # Built here too: fails early on a missing weights file, and describes the evaluator.
    evaluator = build_feature_extractor(
        options.evaluator,
        inception_weights=options.inception_weights,
        minmax_stretch=options.minmax_stretch,
        device="cpu",
    )
    resolved = _resolve(options)
    reference = _load_reference(options, resolved.image_size)
    classifier = load_classifier(options.classifier) if options.classifier else None
    labels = class_major_labels(resolved.classes, options.per_class)  # (N,)
    shards = plan_sample_shards(len(labels), options.shard_size)
    fs, root = url_to_fs(options.output, options.storage_options)
    store = SampleStore(fs, root)
    store.ensure_plan(resolved.plan)
    store.ensure_evaluator(options.evaluator_key, evaluator.info.to_dict())
    sampled, featurised = store.committed_samples(), store.committed_features(options.evaluator_key)
    pending = [(shard, shard.index not in sampled) for shard in shards if shard.index not in featurised]
    to_sample = sum(needs for _, needs in pending)
    print(
        f"evaluate {options.output}: {len(shards)} shards, {len(sampled)} already committed, "
        f"{to_sample} to sample, {len(pending)} to featurise"
    )
    if pending:
        _run_pending(options, resolved, pending, labels)
        store.refresh()

    feature_shards = [store.read_features(options.evaluator_key, shard.index) for shard in shards]
    scores = score_samples(
        reference,
        np.concatenate([s.features for s in feature_shards]),  # (N, D)
        np.concatenate([s.logits for s in feature_shards]),  # (N, C)
        evaluator_info=evaluator.info.to_dict(),
        minmax_stretch=options.minmax_stretch,
        is_splits=options.is_splits,
        prdc_k=options.prdc_k,
        fid_method=options.fid_method,
        seed=options.seed,
    )
    grid_images, correct = [], 0
    for shard in shards:
        samples = store.read_samples(shard.index)
        if classifier is not None:
            correct += int((classifier.predict(samples.images) == samples.class_ids).sum())
        in_grid = samples.indices % options.per_class < GRID_PER_CLASS
        grid_images.append(samples.images[in_grid & (samples.indices // options.per_class < GRID_CLASSES)])
    extra = (
        {"classifier accuracy (samples show their class)": f"{correct / len(labels):.4f}"}
        if classifier
        else {}
    )
    result = scores.to_result(
        evaluator=evaluator.info.to_dict(),
        reference={"path": options.reference_stats, **reference.describe()},
        sampling={**resolved.sampling, "precision": options.precision, "seed": options.seed},
        model={
            "transformer": options.transformer,
            "tokenizer": options.tokenizer,
            "image_size": resolved.image_size,
        },
        protocol={
            "per_class": options.per_class,
            "classes": len(resolved.classes),
            "is_splits": options.is_splits,
            "prdc_k": options.prdc_k,
            "fid_method": options.fid_method,
        },
        extra=extra,
    )
    written = write_report(result, root, filesystem=fs)
    grid = image_grid(np.concatenate(grid_images), columns=min(GRID_PER_CLASS, options.per_class))
    fs.pipe(f"{root}/samples.png", encode_png(grid))
    record = result.to_dict()
    record.update(
        shards_sampled=to_sample, shards_skipped=len(shards) - to_sample, report=written.markdown_path
    )
    return record


# --- command line ---------------------------------------------------------------------------------


def _run_cli(args) -> int:
    from jobs.options import parse_storage_options

    names = {field.name for field in dataclasses.fields(EvaluateOptions)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values["classes"] = tuple(args.classes) if args.classes else None
    values["storage_options"] = parse_storage_options(args.storage_options)
    record = run_evaluate(EvaluateOptions(**values))
    metrics = ", ".join(f"{name} {value:.4g}" for name, value in record["labelled_metrics"].items())
    print(
        f"{record['num_samples']} samples ({record['shards_sampled']} shards sampled, "
        f"{record['shards_skipped']} already committed): {metrics}; report {record['report']}"
    )
    return 0


def register(subparsers) -> None:
    """Add the `evaluate` subcommand, and `fid-stats` (jobs.evaluate.fid_stats) that makes its reference."""
    from jobs.evaluate import fid_stats

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
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sample i uses seed + i")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=defaults.precision)
    knobs = parser.add_argument_group("sampling (defaults: the SamplingConfig stored with the transformer)")
    knobs.add_argument("--steps", type=int, default=None)
    knobs.add_argument("--schedule", default=None, help="arccos, cosine, linear, square, root, ...")
    knobs.add_argument("--temperature", type=float, default=None, help="divides the logits")
    knobs.add_argument("--gumbel-temperature", type=float, default=None)
    knobs.add_argument("--cfg-weight", type=float, default=None)
    knobs.add_argument("--cfg-schedule", choices=("linear", "constant"), default=None)
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
    parser.add_argument("--ray-address", default=None, help="default: $RAY_ADDRESS, else a local Ray")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    parser.set_defaults(run=_run_cli)
    fid_stats.register(subparsers)


__all__ = ["EvaluateOptions", "register", "run_evaluate"]
