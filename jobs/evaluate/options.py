"""The settings of one `maskgit evaluate` run (validated on construction; see jobs.evaluate.job)."""

from __future__ import annotations

import dataclasses
from typing import Any

from evaluation.features import EVALUATORS
from evaluation.metrics import FID_SQRT_METHODS


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """Settings of one evaluation run.

    Attributes:
        transformer: transformer folder (ours) or valeoai `.pth`; local or remote.
        tokenizer: VQGAN folder or taming checkpoint; local or remote.
        output: folder for samples, features and the report (local or s3://).
        reference_stats: `.npz` written by `maskgit fid-stats` with the same evaluator.
        per_class: samples per class (50 in the reference: 50k for 1000 classes).
        classes: class ids to sample (None: every class of the model).
        seed: sample i uses seed + i.
        shard_size: samples per shard (the unit of work and of resumption).
        precision: "fp32" or "bf16" autocast while sampling.
        sampling: overrides of the sampling settings stored with the transformer ({knob: value};
            None values and missing knobs take the stored ones; see `generation.resolve_sampling`).
        evaluator: "efficientnet-lite0" or "inception".
        inception_weights: TF-FID InceptionV3 weights file (for "inception").
        minmax_stretch: the reference's per-image stretch before the evaluator.
        fid_method: "sqrtm" (reference) or "eigh" (same trace, faster on CPU).
        is_splits: Inception Score splits.
        prdc_k: k of the k-NN manifold metrics.
        classifier: optional classifier folder (evaluation.classifier): reports the share of samples
            it assigns to their conditioned class.
        batch_size: samples decoded together.
        workers: Ray actors.
        num_cpus_per_worker: CPU reservation per actor (fractional on small machines).
        num_gpus_per_worker: None = 1 when the cluster has GPUs, else 0.
        threads_per_worker: torch threads per CPU actor (None: cores / workers).
        storage_options: fsspec options (None: the AWS environment).
        ray_address: cluster to join (None: $RAY_ADDRESS, else a local Ray).
        num_cpus: CPUs of a locally started Ray.
        progress: show a progress bar.
    """

    transformer: str
    tokenizer: str
    output: str
    reference_stats: str
    per_class: int = 50
    classes: tuple[int, ...] | None = None
    seed: int = 0
    shard_size: int = 250
    precision: str = "fp32"
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    evaluator: str = "efficientnet-lite0"
    inception_weights: str | None = None
    minmax_stretch: bool = False
    fid_method: str = "sqrtm"
    is_splits: int = 10
    prdc_k: int = 3
    classifier: str | None = None
    batch_size: int = 50
    workers: int = 2
    num_cpus_per_worker: float = 0.5
    num_gpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    storage_options: dict[str, Any] | None = None
    ray_address: str | None = None
    num_cpus: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("per_class", "shard_size", "batch_size", "workers", "is_splits", "prdc_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.evaluator not in EVALUATORS:
            raise ValueError(f"--evaluator must be one of {EVALUATORS}, got {self.evaluator!r}")
        if self.fid_method not in FID_SQRT_METHODS:
            raise ValueError(f"--fid-method must be one of {FID_SQRT_METHODS}, got {self.fid_method!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, got {self.precision!r}")

    @property
    def evaluator_key(self) -> str:
        """Folder name of this evaluator's features under <out>/features/."""
        return self.evaluator + ("-minmax" if self.minmax_stretch else "")
