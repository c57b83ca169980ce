"""The per-worker training loop: one DeepSpeed engine on streamed tokens, run by Ray Train.

Each Ray Train worker runs `train_loop(config_dict)`. It joins the process group Ray set up (gloo on
CPU, nccl on GPU), builds the model from the config, wraps it in DeepSpeed (config from
`jobs.train.deepspeed_config`), restores the latest complete checkpoint (model, optimizer, LR scheduler,
EMA, loader position, step) and trains with the objective of `transformer.objective` on batches of the
streaming loader of `pipeline.dataset`.

Determinism: the loader's order depends only on (seed, epoch, global batch); the masks, label drops
and dropout of a micro-batch are seeded from (seed, step, its index in the global batch). A run killed
and resumed repeats the uninterrupted run's batches and masks, also on another number of workers as
long as the micro-batch size is unchanged (the gradient accumulation absorbs the difference).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from jobs.train.checkpoints import CheckpointMeta, CheckpointStore, convert_to_universal, step_dirname
from jobs.train.config import TrainJobConfig
from jobs.train.deepspeed_config import build_deepspeed_config, lr_multiplier, select_accelerator

logger = logging.getLogger(__name__)


def _quiet_worker_warnings() -> None:
    # DeepSpeed calls torch.distributed functions that torch 2.13 deprecates; one line per step otherwise.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", message=".*nested tensors.*")


def init_deepspeed_distributed(use_gpu: bool) -> None:
    """Join the process group Ray Train created; on CPU skip DeepSpeed's shared-memory op JIT build.

    On the CPU accelerator DeepSpeed compiles `deepspeed_shm_comm` (35–90 s) at every first
    `init_distributed` on a machine; gloo does not need it (docs/architecture.md#platform-notes). Marking the
    op incompatible is the switch DeepSpeed itself consults before building.
    """
    select_accelerator(use_gpu)
    import deepspeed
    import deepspeed.ops

    if not use_gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def model_config_for(config: TrainJobConfig):
    """The model config of this run: the preset (of either family: "maskgit" or "halton") with the
    run's overrides.

    Raises:
        ValueError: an unknown preset, or an override the preset's family does not have (named).
    """
    import dataclasses

    from transformer.families import transformer_preset

    preset = transformer_preset(config.preset)
    known = {field.name for field in dataclasses.fields(preset)}
    unknown = sorted(set(config.model_overrides) - known)
    if unknown:
        raise ValueError(
            f"preset {config.preset!r} ({preset.family} family) has no setting(s) {unknown}; "
            f"it has {sorted(known)}"
        )
    return dataclasses.replace(preset, **config.model_overrides)


def _seeded(config: TrainJobConfig, step: int, chunk: int, device: torch.device) -> torch.Generator:
    """Seed dropout and return the generator for the masks and label drops of one micro-batch.

    `chunk` is the micro-batch's index within the global batch (rank · accumulation + micro), so the
    same samples get the same masks whatever the split between workers and accumulation steps.
    """
    key = f"{config.seed}/{step}/{chunk}".encode()
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
    torch.manual_seed(seed)  # dropout
    return torch.Generator(device=device).manual_seed(seed)


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


# Where a training step's time goes, logged per step with the metrics (`seconds_<phase>`): waiting for
# the loader, the forward and loss, the backward (with ZeRO-1/2 gradient reduction where DeepSpeed
# runs it there), the optimizer step (with ZeRO's reduction or parameter all-gather where it runs
# there), and the rank-0 work around steps: metrics reduction and logging, sample grids, checkpoints.
PHASES = ("data", "forward", "backward", "optimizer", "logging", "grids", "checkpoint")


class _PhaseClock:
    """Seconds spent in each of `PHASES` since the last `take()`."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def take(self, steps: float) -> dict[str, float]:
        """Mean seconds per step of each phase over the window just ended, then start a new window."""
        taken = {f"seconds_{name}": value / max(steps, 1.0) for name, value in self.seconds.items()}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return taken


class _Worker(NamedTuple):
    """One worker's training state once set up (and restored from the latest checkpoint)."""

    rank: int
    world: int
    device: torch.device
    model_config: Any  # transformer.config.TransformerConfig or HaltonConfig
    store: CheckpointStore
    work_dir: Path  # local scratch for checkpoint upload/download (a temp dir `train_loop` removes)
    engine: Any  # deepspeed.DeepSpeedEngine
    ema: Any  # jobs.train.ema.WeightEMA or None
    grids: Any  # the sample-grid pipeline (jobs.train.outputs) or None without a tokenizer
    step: int  # the step to start from (0, or the restored checkpoint's)
    loader: Any  # the stateful loader, positioned after the restored step's samples
    outputs: Any  # jobs.train.outputs.RunOutputs on rank 0, None elsewhere


def _start_worker(config: TrainJobConfig, work_dir: Path) -> _Worker:
    """Join the process group, build the engine, restore the latest checkpoint and open the loader."""
    import ray.train

    from jobs.train.outputs import RunOutputs, sample_grid_pipeline
    from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
    from pipeline.stateful_loader import make_loader

    context = ray.train.get_context()
    rank, world, local_rank = context.get_world_rank(), context.get_world_size(), context.get_local_rank()
    init_deepspeed_distributed(config.use_gpu)
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if config.use_gpu else torch.device("cpu")
    if not config.use_gpu:
        torch.set_num_threads(max(1, int(config.cpus_per_worker)))

    model_config = model_config_for(config)
    store = CheckpointStore(config.checkpoint_uri, config.storage_options)
    resume_step = store.latest_step()
    resume_meta = store.read_meta(resume_step) if resume_step is not None else None
    universal = resume_meta is not None and resume_meta.world_size != world

    engine = build_engine(config, model_config, load_universal=universal)
    grids = sample_grid_pipeline(engine.module, config) if config.tokenizer else None
    ema = None
    if config.ema_decay is not None:
        from jobs.train.ema import WeightEMA

        ema = WeightEMA(engine.module, config.ema_decay)

    step, loader_state = 0, None
    if resume_meta is not None:
        step, loader_state = _restore(
            engine, ema, store, resume_meta, work_dir, rank=rank, local_rank=local_rank, universal=universal
        )

    dataset = TokenDataset(
        config.store,
        batch_size=config.micro_batch_size * config.grad_accum_steps,  # a rank's share of one step
        rank=rank,
        world_size=world,
        order=OrderConfig(seed=config.seed, shuffle_window=config.shuffle_window),
        streaming=StreamingConfig(cache_dir=config.cache_dir),
        storage_options=config.storage_options,
    )
    loader = make_loader(dataset, num_workers=config.loader_workers)
    if loader_state is not None:
        loader.load_state_dict(loader_state)
    outputs = RunOutputs(config, rank=rank) if rank == 0 else None
    if outputs is not None:
        outputs.start_progress(initial=step, total=config.steps)
    return _Worker(
        rank, world, device, model_config, store, work_dir, engine, ema, grids, step, loader, outputs
    )


def _train_steps(config: TrainJobConfig, w: _Worker) -> int:
    """Optimizer steps from `w.step` to `config.steps`, with metrics, sample grids and checkpoints on
    their periods; returns the last step."""
    import ray.train

    from jobs.train.outputs import write_sample_grid

    tokens_per_step = config.global_batch_size * w.model_config.num_tokens
    timer, window = _Timer(), {"loss": 0.0, "masked_accuracy": 0.0, "count": 0}
    clock = _PhaseClock()
    latest_metrics: dict[str, float] = {}
    step, batches = w.step, iter(_endless(w.loader))
    while step < config.steps:
        with clock.phase("data"):
            batch = next(batches)
        loss_sum, accuracy_sum, micro_batches = optimizer_step(
            w.engine,
            batch.tokens.to(w.device, non_blocking=True),
            batch.labels.to(w.device, non_blocking=True),
            config=config,
            mask_token_id=w.model_config.mask_token_id,
            step=step,
            rank=w.rank,
            clock=clock,
        )
        window["loss"] += loss_sum
        window["masked_accuracy"] += accuracy_sum
        window["count"] += micro_batches
        step += 1
        if w.ema is not None:
            w.ema.update()
        if step % config.log_every == 0 or step == config.steps:
            with clock.phase("logging"):
                metrics = _reduce_window(window, w.device)
                elapsed = timer.lap()
                steps_in_window = metrics.pop("steps")
                metrics.update(
                    lr=w.engine.get_lr()[0],
                    grad_norm=float(w.engine.get_global_grad_norm() or 0.0),
                    tokens_per_s=tokens_per_step * steps_in_window / max(elapsed, 1e-9),
                    epoch=float(w.loader.state_dict().get("epoch", 0)),
                    **clock.take(steps_in_window),  # this rank's; rank 0 logs them
                )
                window = {"loss": 0.0, "masked_accuracy": 0.0, "count": 0}
                latest_metrics = metrics
                if w.outputs is not None:
                    w.outputs.log(step, metrics)
        elif w.outputs is not None:
            w.outputs.advance(step)
        if config.sample_every and step % config.sample_every == 0 and config.tokenizer:
            with clock.phase("grids"):
                write_sample_grid(w.grids, step, w.outputs)
        if step % config.checkpoint_every == 0 or step == config.steps:
            with clock.phase("checkpoint"):
                state = w.loader.state_dict()
                _save(
                    w.engine, w.ema, w.store, config, w.model_config, step, state, w.work_dir, w.rank, w.world
                )
            # Ray gets the metrics at checkpoints only (its per-report log line is loud).
            ray.train.report({"step": step, **latest_metrics})
    return step


def train_loop(config_dict: dict) -> None:
    """Ray Train worker entry point (see module docstring)."""
    import torch.distributed as dist

    from jobs.train.outputs import write_sample_grid

    _quiet_worker_warnings()
    config = TrainJobConfig.from_dict(config_dict)
    # Checkpoint scratch and a remote run's staging dir go on success and on failure alike: what a
    # failed run leaves for its user is in the run directory (metrics so far) and the Ray job's logs.
    with tempfile.TemporaryDirectory(prefix="maskgit-train-") as scratch:
        worker = None
        try:
            worker = _start_worker(config, Path(scratch))
            step = _train_steps(config, worker)
            if config.tokenizer and not (config.sample_every and step % config.sample_every == 0):
                write_sample_grid(worker.grids, step, worker.outputs)  # the grid of the final weights
            dist.barrier()
            if worker.outputs is not None:
                worker.outputs.finish()
        finally:
            if worker is not None and worker.outputs is not None:
                worker.outputs.close()


def build_engine(config: TrainJobConfig, model_config, *, load_universal: bool = False):
    """A DeepSpeed engine around a freshly initialised transformer of the run's family (same weights on
    every rank)."""
    import deepspeed

    from transformer.families import build_transformer

    ds_config = build_deepspeed_config(
        micro_batch_size=config.micro_batch_size,
        grad_accum_steps=config.grad_accum_steps,
        zero_stage=config.zero_stage,
        precision=config.precision,
        optimizer=config.optimizer,
    )
    if load_universal:
        ds_config["checkpoint"] = {"load_universal": True}
    torch.manual_seed(config.seed)
    model = build_transformer(model_config)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config=ds_config,
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, config.optimizer, config.steps)
        ),
    )
    return engine


def optimizer_step(
    engine,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: TrainJobConfig,
    mask_token_id: int,
    step: int,
    rank: int,
    clock: _PhaseClock | None = None,
) -> tuple[float, float, int]:
    """One optimizer step on this rank's share of a global batch, micro-batch by micro-batch.

    Args:
        engine: the DeepSpeed engine (steps the optimizer at the accumulation boundary).
        tokens: LongTensor[b, h, w], b = micro_batch_size · grad_accum_steps; labels LongTensor[b].
        clock: where the forward, backward and optimizer seconds are added (None: not timed).

    Returns:
        (sum of micro-batch losses, sum of masked-token accuracies, number of micro-batches).
    """
    from transformer.objective import masked_token_loss

    clock = clock or _PhaseClock()
    loss_sum, accuracy_sum = 0.0, 0.0
    chunks = list(zip(tokens.chunk(config.grad_accum_steps), labels.chunk(config.grad_accum_steps)))
    for micro, (micro_tokens, micro_labels) in enumerate(chunks):
        with clock.phase("forward"):
            result = masked_token_loss(
                engine,
                micro_tokens,
                micro_labels,
                generator=_seeded(config, step, rank * config.grad_accum_steps + micro, tokens.device),
                schedule=config.schedule,
                mask_mode=config.mask_mode,
                loss_on=config.loss_on,
                label_smoothing=config.label_smoothing,
                label_drop=config.label_drop,
                mask_token_id=mask_token_id,
            )
        with clock.phase("backward"):
            engine.backward(result.loss)
        with clock.phase("optimizer"):
            engine.step()
        loss_sum += float(result.loss.detach())
        accuracy_sum += float(torch.nan_to_num(result.masked_accuracy, 0.0))
    return loss_sum, accuracy_sum, len(chunks)


def _endless(loader):
    """Batches across epochs: the loader's state moves to the next epoch after each pass."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the token store yields no batch: it holds fewer samples than one global batch")


def _reduce_window(window: dict, device: torch.device) -> dict:
    import torch.distributed as dist

    values = torch.tensor([window["loss"], window["masked_accuracy"], window["count"]], device=device)
    dist.all_reduce(values)
    count = max(values[2].item(), 1.0)
    world = dist.get_world_size()
    return {
        "loss": values[0].item() / count,
        "masked_accuracy": values[1].item() / count,
        "steps": values[2].item() / world,
    }


def _save(
    engine, ema, store: CheckpointStore, config, model_config, step, loader_state, work_dir, rank, world
):
    """Every rank saves and uploads its own files; rank 0 commits once all have (a barrier)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    local_root = work_dir / "ckpt"
    tag = step_dirname(step)
    engine.save_checkpoint(str(local_root), tag=tag)
    if ema is not None:
        full = ema.full_state_dict()  # collective under ZeRO-3
        if rank == 0:
            save_file({k: v.contiguous() for k, v in full.items()}, str(local_root / tag / "ema.safetensors"))
    store.upload_rank_files(step, local_root / tag, rank)
    dist.barrier()
    if rank == 0:
        store.commit(
            CheckpointMeta(
                step=step,
                world_size=world,
                zero_stage=config.zero_stage,
                loader_state=loader_state,
                has_ema=ema is not None,
                model_config=model_config.to_dict(),
                extra={"sampling": config.sampling, "precision": config.precision},
            )
        )
        store.prune(config.keep_checkpoints)
    dist.barrier()
    shutil.rmtree(local_root, ignore_errors=True)


def _restore(engine, ema, store, meta: CheckpointMeta, work_dir: Path, *, rank, local_rank, universal):
    """Load the latest complete checkpoint; convert it to the universal format if the world size changed."""
    import torch.distributed as dist
    from safetensors.torch import load_file

    # One download (and conversion) per node, shared by that node's ranks.
    run_key = hashlib.sha256(store.uri.encode()).hexdigest()[:12]
    node_dir = Path(tempfile.gettempdir()) / f"maskgit-resume-{run_key}-{meta.step}"
    try:
        if local_rank == 0:
            step_dir = store.download(meta.step, node_dir)
            if universal:
                convert_to_universal(step_dir, node_dir / "universal-root")
        dist.barrier()
        step_dir = node_dir / step_dirname(meta.step)
        if universal:
            logger.info(
                "resuming step %d saved by %d workers on a new world size", meta.step, meta.world_size
            )
            load_path, _ = engine.load_checkpoint(str(node_dir / "universal-root"))
        else:
            load_path, _ = engine.load_checkpoint(str(node_dir), tag=step_dirname(meta.step))
        if load_path is None:
            raise ValueError(f"DeepSpeed could not load checkpoint {store.uri}/{step_dirname(meta.step)}")
        if ema is not None:
            ema_file = step_dir / "ema.safetensors"
            if meta.has_ema and ema_file.is_file():
                ema.load_full_state_dict(load_file(str(ema_file)))
        dist.barrier()
    finally:  # also when loading fails: no download stays in $TMPDIR
        if local_rank == 0:
            shutil.rmtree(node_dir, ignore_errors=True)
    return meta.step, meta.loader_state
