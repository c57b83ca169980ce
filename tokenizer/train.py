"""Single-process VQGAN training (taming's recipe): reconstruction + perceptual + PatchGAN + VQ losses.

`train_tokenizer(config, dataset, out_dir)` is the whole loop; the CLI (`maskgit train-tokenizer`) and the
quickstart call it. It follows taming's `VQModel.training_step`: one Adam step of the VQGAN on
`VQGANLoss.generator_loss`, then (once the GAN is active) one Adam step of the discriminator; Adam
betas (0.5, 0.9) for both. Optional dead-code restart (`tokenizer.codebook`).

`out_dir` layout:
    vqgan/                 the tokenizer in our format (`load_tokenizer(out_dir / "vqgan")`), refreshed at
                           every checkpoint
    training_state.pt      everything needed to resume (model, discriminator, optimizers, step, RNG),
                           read with torch.load(weights_only=True)
    training_config.json   the TokenizerTrainingConfig (`tokenizer.train_config`; importable from here too)
    log.jsonl              one JSON object per log interval, plus "eval" and "restart" events
    reconstructions.png    originals (odd rows) vs reconstructions (even rows) of the eval images
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tokenizer.checkpoint import save_vqgan
from tokenizer.codebook import DeadCodeRestarter, code_counts, usage_from_counts
from tokenizer.discriminator import NLayerDiscriminator
from tokenizer.families import Tokenizer, build_tokenizer, tokenizer_config_from_dict
from tokenizer.losses import VQGANLoss
from tokenizer.perceptual import build_perceptual_loss
from tokenizer.quality import ReconstructionReport, measure_reconstruction, save_reconstruction_grid
from tokenizer.train_config import TokenizerTrainingConfig
from tokenizer.vqgan import VQGANOutput

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.json"
LOG_FILE = "log.jsonl"
GRID_FILE = "reconstructions.png"
MODEL_DIR = "vqgan"


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run produced."""

    steps: int  # global step reached
    start_step: int  # 0, or the step a resumed run started from
    out_dir: Path
    model_dir: Path  # load with tokenizer.load_tokenizer
    initial: ReconstructionReport  # eval images at start_step
    final: ReconstructionReport  # eval images at the end
    grid_path: Path
    log_path: Path
    seconds: float


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; anything else as torch.device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


class EpochBatches:
    """Infinite batch sampler: a seeded permutation per epoch, drop-last, resumable at any step."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int = 0):
        if dataset_size < batch_size:
            raise ValueError(f"dataset has {dataset_size} images, fewer than one batch of {batch_size}")
        self.dataset_size, self.batch_size = dataset_size, batch_size
        self.seed, self.start_step = seed, start_step

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = self.dataset_size // self.batch_size
        epoch, offset = divmod(self.start_step, per_epoch)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.dataset_size, generator=generator)
            for index in range(offset, per_epoch):
                yield order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
            epoch, offset = epoch + 1, 0


def _images_of(batch: Any) -> torch.Tensor:
    """A batch from the loader: a tensor, or (images, labels, ...) as image datasets return."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _eval_images(dataset: Dataset, count: int) -> torch.Tensor:
    count = min(count, len(dataset))
    return torch.stack([_images_of(dataset[i]) for i in range(count)])


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _save_training_state(out_dir: Path, state: dict[str, Any]) -> None:
    temporary = out_dir / f".{STATE_FILE}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, out_dir / STATE_FILE)  # never a half-written state under the real name


class _Parts(NamedTuple):
    """The modules and optimisers of a run (everything `training_state.pt` holds besides step and RNG)."""

    model: Tokenizer
    discriminator: NLayerDiscriminator
    objective: VQGANLoss
    optimizer: torch.optim.Optimizer
    disc_optimizer: torch.optim.Optimizer
    restarter: DeadCodeRestarter


def _build_parts(config: TokenizerTrainingConfig, device: torch.device) -> _Parts:
    """Fresh modules and optimisers, initialised from the global RNG in a fixed order."""
    model = build_tokenizer(config.vqgan).to(device)  # a VQGAN or a LlamaGenVQ
    discriminator = NLayerDiscriminator(config.vqgan.out_channels, config.disc_channels, config.disc_layers)
    perceptual = build_perceptual_loss(
        config.perceptual, lpips_weights=config.lpips_weights, vgg_weights=config.vgg_weights
    )
    objective = VQGANLoss(
        discriminator.to(device),
        perceptual.to(device) if perceptual is not None else None,
        perceptual_weight=config.perceptual_weight,
        reconstruction=config.reconstruction,
        codebook_weight=config.codebook_weight,
        disc_weight=config.disc_weight,
        disc_start=config.gan_start,
    )
    betas = (0.5, 0.9)  # taming's Adam betas for both optimisers
    return _Parts(
        model=model,
        discriminator=discriminator,
        objective=objective,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr, betas=betas),
        disc_optimizer=torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas),
        restarter=DeadCodeRestarter(config.vqgan.codebook_size, config.dead_code_restart or 1),
    )


def _restore(parts: _Parts, config: TokenizerTrainingConfig, state_path: Path) -> int:
    """Load `training_state.pt` into `parts` and the global RNG; returns the step it was saved at."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    stored = tokenizer_config_from_dict(state["config"]["vqgan"])
    if stored != config.vqgan:
        raise ValueError(f"{state_path} was trained with a different VQGAN config: {stored}")
    parts.model.load_state_dict(state["model"])
    parts.discriminator.load_state_dict(state["discriminator"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.disc_optimizer.load_state_dict(state["disc_optimizer"])
    parts.restarter.load_state_dict(state["code_usage"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def _checkpoint(out_dir: Path, parts: _Parts, config: TokenizerTrainingConfig, step: int) -> None:
    """Refresh `out_dir/vqgan` and write the resumable training state."""
    save_vqgan(parts.model, out_dir / MODEL_DIR)
    state = {
        "step": step,
        "config": config.to_dict(),
        "model": parts.model.state_dict(),
        "discriminator": parts.discriminator.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "disc_optimizer": parts.disc_optimizer.state_dict(),
        "code_usage": parts.restarter.state_dict(),
        "rng": torch.get_rng_state(),
    }
    _save_training_state(out_dir, state)


def _make_loader(
    dataset: Dataset, config: TokenizerTrainingConfig, device: torch.device, step: int
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=EpochBatches(len(dataset), config.batch_size, config.seed, start_step=step),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: creating the iterator would otherwise draw from the global RNG, which a
        # resumed run has just restored, and shift every later random choice (dead-code restarts).
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + step),
    )


class _StepResult(NamedTuple):
    record: dict[str, float]  # the step's loss terms (and discriminator terms once the GAN is active)
    indices: torch.Tensor  # LongTensor[B, h, w]: the codes chosen
    latents: torch.Tensor  # (B, D, h, w) encoder outputs, for dead-code restarts


def _train_step(parts: _Parts, images: torch.Tensor, step: int, autocast: Any) -> _StepResult:
    """One Adam step of the VQGAN, then (once the GAN is active) one of the discriminator."""
    model, objective = parts.model, parts.objective
    with autocast:
        latents = model.encode_to_latents(images)  # (B, D, h, w)
        quantized = model.quantize(latents)
        reconstruction = model.decode_from_latents(quantized.quantized)
        # model.forward, unrolled to keep the latents for dead-code restarts
        output = VQGANOutput(
            reconstruction, quantized.indices, quantized.codebook_loss, quantized.commitment_loss
        )
        losses = objective.generator_loss(images, output, step, model.last_decoder_layer)
    parts.optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    parts.optimizer.step()
    record = {name: float(value.detach()) for name, value in losses._asdict().items()}
    if objective.gan_factor(step) > 0:
        with autocast:
            disc_losses = objective.discriminator_loss(images, reconstruction, step)
        parts.disc_optimizer.zero_grad(set_to_none=True)
        disc_losses.total.backward()
        parts.disc_optimizer.step()
        record.update(
            disc_loss=float(disc_losses.total.detach()),
            logits_real=float(disc_losses.logits_real),
            logits_fake=float(disc_losses.logits_fake),
        )
    return _StepResult(record, quantized.indices, latents)


class _LogWindow:
    """Means of the logged quantities and codebook usage over one log interval."""

    def __init__(self, codebook_size: int) -> None:
        self.code_counts = torch.zeros(codebook_size, dtype=torch.long)
        # Sums and counts per quantity (GAN terms only exist once the GAN is active).
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add_codes(self, indices: torch.Tensor) -> None:
        self.code_counts += code_counts(indices.detach().cpu(), self.code_counts.numel())

    def add_record(self, record: dict[str, float]) -> None:
        for name, value in record.items():
            self.totals[name] = self.totals.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def flush(self, step: int, seconds: float) -> dict[str, Any]:
        """The window's log record; starts the next window."""
        means = {name: value / self.counts[name] for name, value in self.totals.items()}
        usage = usage_from_counts(self.code_counts)
        self.totals.clear()
        self.counts.clear()
        self.code_counts.zero_()
        return {
            "step": step,
            **means,
            "codebook_fraction_used": usage.fraction_used,
            "perplexity": usage.perplexity,
            "seconds": round(seconds, 2),
        }


def _train_loop(
    parts: _Parts,
    config: TokenizerTrainingConfig,
    loader: DataLoader,
    device: torch.device,
    out_dir: Path,
    *,
    step: int,
    started: float,
    progress: bool,
) -> int:
    """Train from `step` up to `config.steps`, logging and checkpointing on the way; returns the step."""
    log_path = out_dir / LOG_FILE
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    window = _LogWindow(config.vqgan.codebook_size)
    parts.model.train()
    parts.discriminator.train()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train-tokenizer", unit="step")
    batches = iter(loader)
    try:
        while step < config.steps:
            images = _images_of(next(batches)).to(device, non_blocking=True)
            result = _train_step(parts, images, step, autocast)
            window.add_codes(result.indices)
            step += 1
            if config.dead_code_restart:
                parts.restarter.observe(result.indices)
                restarted = parts.restarter.maybe_restart(step, parts.model.quantize, result.latents)
                if restarted:
                    _append_log(log_path, {"event": "restart", "step": step, "codes": restarted})
            window.add_record(result.record)
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                logged = window.flush(step, time.time() - started)
                _append_log(log_path, logged)
                bar.set_postfix(loss=f"{logged['total']:.4f}", rec=f"{logged['reconstruction']:.4f}")
            if step % config.checkpoint_every == 0:
                _checkpoint(out_dir, parts, config, step)
    finally:
        bar.close()
    return step


def train_tokenizer(
    config: TokenizerTrainingConfig,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    eval_images: torch.Tensor | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainingSummary:
    """Train a VQGAN on `dataset` and write it to `out_dir` (layout in the module docstring).

    Args:
        config: the run's settings.
        dataset: items are (3, H, W) float tensors in [-1, 1], or tuples whose first element is one
            (e.g. `pipeline.image_dataset.ImageFolderDataset`); H, W divisible by the downsampling factor.
        out_dir: output folder.
        eval_images: (N, 3, H, W) images measured before and after training and shown in the grid;
            default: the first `config.grid_images` items of `dataset`.
        resume: continue from `out_dir/training_state.pt` when present (else start fresh).
        progress: show a tqdm bar.

    Raises:
        ValueError: `out_dir` already holds a run and `resume` is False, or the stored run's VQGAN
            config differs from `config.vqgan`.
    """
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out_dir / STATE_FILE, out_dir / LOG_FILE
    if state_path.exists() and not resume:
        raise ValueError(
            f"{out_dir} already holds a training run ({STATE_FILE}); resume it or pick another folder"
        )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    parts = _build_parts(config, device)

    step = 0
    if resume and state_path.exists():
        step = _restore(parts, config, state_path)
        logger.info("resuming %s at step %d", out_dir, step)
    elif resume:
        logger.info("nothing to resume in %s; starting a fresh run", out_dir)
    start_step = step
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    if eval_images is None:
        eval_images = _eval_images(dataset, config.grid_images)
    initial = measure_reconstruction(parts.model, eval_images).report
    _append_log(log_path, {"event": "eval", "step": step, **initial.as_dict()})

    loader = _make_loader(dataset, config, device, step)
    step = _train_loop(parts, config, loader, device, out_dir, step=step, started=started, progress=progress)
    _checkpoint(out_dir, parts, config, step)

    measured = measure_reconstruction(parts.model, eval_images)
    _append_log(log_path, {"event": "eval", "step": step, **measured.report.as_dict()})
    count = min(config.grid_images, eval_images.shape[0])
    grid = save_reconstruction_grid(
        eval_images[:count], measured.reconstructions[:count], out_dir / GRID_FILE
    )
    return TrainingSummary(
        steps=step,
        start_step=start_step,
        out_dir=out_dir,
        model_dir=out_dir / MODEL_DIR,
        initial=initial,
        final=measured.report,
        grid_path=grid,
        log_path=log_path,
        seconds=time.time() - started,
    )
