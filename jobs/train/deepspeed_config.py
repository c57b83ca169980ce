"""The one function that builds the DeepSpeed config for the masked-transformer training job.

Defaults follow the reference's recipe (docs/reference.md#training-recipe): AdamW lr 1e-4, betas
(0.9, 0.96), weight decay 1e-5, gradient clipping 1.0. The optimizer is DeepSpeed's torch-AdamW path
(`torch_adam: true`), which needs no JIT-compiled fused kernel on CPU; fp16 is not offered (DeepSpeed
refuses it on CPU, and bf16 is the better choice on every accelerator this job targets).

bf16 is DeepSpeed's `torch_autocast` section, not its `bf16` section. The `bf16` section casts the whole
model to bf16 (LayerNorm, softmax, residual adds and the embedding backward run in bf16, which on CPU
is slower than fp32) and keeps a second, fp32 master copy in the optimizer that it copies to and from
every step. `torch_autocast` keeps the fp32 parameters and gradients and runs the forward under
`torch.autocast(dtype=bfloat16)`, as a plain bf16 PyTorch loop does: matmuls in bf16, reductions and
normalisations in fp32. Gradients are reduced across workers in fp32 (no module is listed as safe for
bf16 communication), so a bf16 run differs from an fp32 run only in its forward's matmuls.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16")


ACCELERATOR_VARIABLE = "DS_ACCELERATOR"  # DeepSpeed reads it once, at its first import


def accelerator_for(*, use_gpu: bool | None, cuda_available: bool, requested: str | None) -> str:
    """DeepSpeed's accelerator name for a process: "cuda" or "cpu" (or what the user `requested`).

    The hardware decides unless someone asked: `use_gpu` None follows `cuda_available`; True / False
    is the job's own choice (Ray Train's `use_gpu`). A `requested` DS_ACCELERATOR wins where it agrees
    with that choice; one that contradicts it would build a CPU engine fed CUDA tensors (or the
    reverse), so it is an error that names the variable.

    Raises:
        ValueError: `requested` contradicts `use_gpu`, or `use_gpu` is True without a visible GPU.
    """
    if use_gpu and not cuda_available:
        raise ValueError("use_gpu is set but torch sees no CUDA device in this process")
    wanted = None if use_gpu is None else ("cuda" if use_gpu else "cpu")
    if requested:
        if wanted is not None and requested != wanted:
            raise ValueError(
                f"{ACCELERATOR_VARIABLE}={requested!r} contradicts this job's use_gpu={use_gpu}; "
                f"unset it or set it to {wanted!r}"
            )
        return requested
    return wanted or ("cuda" if cuda_available else "cpu")


def select_accelerator(use_gpu: bool | None = None) -> str:
    """Before importing deepspeed: set DS_ACCELERATOR for this process (see `accelerator_for`) and
    return it, instead of letting DeepSpeed guess and warn. Nothing forces the CPU where a GPU is
    visible unless the user set DS_ACCELERATOR=cpu themselves."""
    import torch

    requested = os.environ.get(ACCELERATOR_VARIABLE)
    name = accelerator_for(use_gpu=use_gpu, cuda_available=torch.cuda.is_available(), requested=requested)
    os.environ[ACCELERATOR_VARIABLE] = name
    return name


LR_SCHEDULES = ("constant", "cosine", "cosine-tail")
COSINE_TAIL_FRACTION = 0.1  # the v2 recipe decays over the last 10 % of its iterations


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and schedule settings; defaults are the reference's."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    warmup_steps: int = 0
    # "constant"; "cosine" (decay to min_lr_ratio · lr after warm-up); "cosine-tail" (the v2 recipe:
    # constant, then a cosine over the last 10 % of the steps, floored at min_lr_ratio · lr)
    schedule: str = "constant"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {self.schedule!r}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0 and warmup_steps >= 0")


def build_deepspeed_config(
    *,
    micro_batch_size: int,
    grad_accum_steps: int = 1,
    zero_stage: int = 1,
    precision: str = "fp32",
    optimizer: OptimizerSettings = OptimizerSettings(),
) -> dict:
    """DeepSpeed config dict for one engine per worker.

    Args:
        micro_batch_size: samples per worker per forward/backward.
        grad_accum_steps: micro-batches per optimizer step.
        zero_stage: 1, 2 or 3.
        precision: "fp32" or "bf16" (bf16: autocast forward over fp32 weights and gradients).
        optimizer: AdamW and LR-schedule settings.

    Returns:
        A dict to pass as `deepspeed.initialize(config=...)`.
    """
    if zero_stage not in (1, 2, 3):
        raise ValueError(f"zero_stage must be 1, 2 or 3, got {zero_stage}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if micro_batch_size < 1 or grad_accum_steps < 1:
        raise ValueError("micro_batch_size and grad_accum_steps must be >= 1")
    config: dict = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": optimizer.grad_clip,
        "zero_optimization": {"stage": zero_stage},
        # bf16 = autocast over fp32 weights (module docstring); never the "bf16" section.
        "torch_autocast": {
            "enabled": precision == "bf16",
            "dtype": "bfloat16",
            "lower_precision_safe_modules": [],
        },
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optimizer.lr,
                "betas": list(optimizer.betas),
                "weight_decay": optimizer.weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "steps_per_print": 10**9,  # our own progress bar and metrics log replace DeepSpeed's prints
        "wall_clock_breakdown": False,
    }
    return config


def lr_multiplier(step: int, optimizer: OptimizerSettings, total_steps: int) -> float:
    """LR factor at optimizer step `step`: linear warm-up, then constant or cosine decay.

    Used through `torch.optim.lr_scheduler.LambdaLR`, whose state DeepSpeed saves with each checkpoint.
    """
    if optimizer.warmup_steps and step < optimizer.warmup_steps:
        return (step + 1) / optimizer.warmup_steps
    if optimizer.schedule == "constant":
        return 1.0
    if optimizer.schedule == "cosine-tail":
        tail_start = total_steps * (1.0 - COSINE_TAIL_FRACTION)
        if step < tail_start:
            return 1.0
        progress = min(1.0, (step - tail_start) / max(1.0, total_steps - tail_start))
        return max(optimizer.min_lr_ratio, 0.5 * (1.0 + math.cos(math.pi * progress)))
    span = max(1, total_steps - optimizer.warmup_steps)
    progress = min(1.0, (step - optimizer.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optimizer.min_lr_ratio + (1.0 - optimizer.min_lr_ratio) * cosine
