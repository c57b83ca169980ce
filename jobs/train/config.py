"""Settings of the training job, shared by the driver (`jobs/train/driver.py`) and the workers.

One frozen dataclass travels to every Ray Train worker as its `config` argument
(docs/architecture.md#conventions, item 9); the defaults are the reference's recipe
(docs/reference.md#training-recipe): AdamW lr 1e-4, betas (0.9, 0.96), weight decay 1e-5, label
smoothing 0.1, label drop 0.1, gradient clipping 1.0, constant LR, arccos masking, Bernoulli masks and
the loss on all tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from jobs.train.deepspeed_config import PRECISIONS, OptimizerSettings
from weights.config_base import FrozenConfig


@dataclass(frozen=True)
class TrainJobConfig(FrozenConfig):
    """Everything one training run needs; `to_dict`/`from_dict` round-trip through JSON.

    Attributes:
        store: token store URL (local path or s3://...).
        out: run directory (local path or s3://...) for metrics, sample grids, checkpoints, export.
        checkpoint_dir: where checkpoints go; defaults to `<out>/checkpoints`.
        storage_options: fsspec options without secrets (credentials come from the AWS environment).
        preset: transformer preset name (`transformer.config.PRESETS`).
        model_overrides: TransformerConfig fields replacing the preset's (e.g. {"depth": 4}).
        num_workers: Ray Train workers (one DeepSpeed engine each).
        use_gpu: one GPU per worker with nccl; otherwise CPU with gloo.
        cpus_per_worker: CPUs Ray reserves per worker.
        zero_stage: DeepSpeed ZeRO stage (1, 2 or 3).
        precision: "fp32" or "bf16".
        global_batch_size: samples per optimizer step summed over workers (constant across resumes).
        micro_batch_size: samples per worker per forward/backward; the gradient accumulation is
            global_batch_size / (micro_batch_size · num_workers).
        steps: optimizer steps of the whole run.
        optimizer: AdamW + LR schedule settings.
        schedule / mask_mode / loss_on / label_smoothing / label_drop: the objective (transformer.objective).
        ema_decay: EMA of the weights (exported instead of the raw weights when set).
        seed: seeds the data order, the masks and dropout.
        checkpoint_every / keep_checkpoints: checkpoint period in steps and how many to keep.
        log_every: metrics period in steps.
        sample_every: sample-grid period in steps (0 = only at the end; needs `tokenizer`).
        tokenizer: VQGAN folder for decoding sample grids (optional).
        sampling: sampling defaults exported with the weights (SamplingConfig fields).
        shuffle_window: shards mixed together by the loader's shuffle.
        loader_workers: DataLoader worker processes per training worker.
        cache_dir: local shard cache of the loader (default: `pipeline.dataset.default_cache_dir()`).
        max_failures: Ray Train restarts of the worker group after a failure (each resumes from the
            latest checkpoint).
    """

    store: str
    out: str
    checkpoint_dir: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: int = 1
    precision: str = "fp32"
    global_batch_size: int = 64
    micro_batch_size: int = 32
    steps: int = 1000
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: str = "arccos"
    mask_mode: str = "bernoulli"
    loss_on: str = "all"
    label_smoothing: float = 0.1
    label_drop: float = 0.1
    ema_decay: float | None = None
    seed: int = 42
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0
    tokenizer: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    shuffle_window: int = 8
    loader_workers: int = 0
    cache_dir: str | None = None
    max_failures: int = 0
    unknown_key_label: ClassVar[str] = "training setting"

    def __post_init__(self) -> None:
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("num_workers", "global_batch_size", "micro_batch_size", "steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.grad_accum_steps  # noqa: B018 (validates divisibility early)

    @property
    def grad_accum_steps(self) -> int:
        per_step = self.micro_batch_size * self.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global batch {self.global_batch_size} is not a multiple of micro batch "
                f"{self.micro_batch_size} x {self.num_workers} workers"
            )
        return self.global_batch_size // per_step

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint_dir or f"{self.out.rstrip('/')}/checkpoints"

    @classmethod
    def _from_stored(cls, values: dict[str, Any]) -> dict[str, Any]:
        optimizer = values.get("optimizer") or {}
        if isinstance(optimizer, dict):  # nested settings; JSON gives `betas` as a list
            values["optimizer"] = OptimizerSettings(
                **{**optimizer, "betas": tuple(optimizer.get("betas", OptimizerSettings().betas))}
            )
        return values
