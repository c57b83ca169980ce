"""Single-process VQGAN training (taming's recipe): reconstruction + perceptual + PatchGAN + VQ losses.

`train_tokenizer(config, dataset, out_dir)` is the whole loop; the CLI (`maskgit train-tokenizer`) and the
quickstart call it. It follows taming's `VQModel.training_step`: one Adam step of the VQGAN on
`VQGANLoss.generator_loss`, then (once the GAN is active) one Adam step of the discriminator; Adam
betas (0.5, 0.9) for both. Optional dead-code restart (`tokenizer.codebook`).

`out_dir` layout:
    vqgan/                 the tokenizer in our format (`load_vqgan(out_dir / "vqgan")`), refreshed at
                           every checkpoint
    training_state.pt      everything needed to resume (model, discriminator, optimizers, step, RNG),
                           read with torch.load(weights_only=True)
    training_config.json   the TokenizerTrainingConfig
    log.jsonl              one JSON object per log interval, plus "eval" and "restart" events
    reconstructions.png    originals (odd rows) vs reconstructions (even rows) of the eval images
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tokenizer.checkpoint import save_vqgan
from tokenizer.codebook import DeadCodeRestarter, code_counts, usage_from_counts
from tokenizer.config import PRESETS, VQGANConfig
from tokenizer.discriminator import NLayerDiscriminator
from tokenizer.losses import RECONSTRUCTION_KINDS, VQGANLoss
from tokenizer.perceptual import PERCEPTUAL_KINDS, build_perceptual_loss
from tokenizer.quality import ReconstructionReport, measure_reconstruction, save_reconstruction_grid
from tokenizer.vqgan import VQGAN, VQGANOutput

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_FILE = "training_config.json"
LOG_FILE = "log.jsonl"
GRID_FILE = "reconstructions.png"
MODEL_DIR = "vqgan"


@dataclass(frozen=True)
class TokenizerTrainingConfig:
    """Everything that decides a tokenizer training run (taming's values where it has one).

    Attributes:
        vqgan: the architecture.
        steps: total optimisation steps (a resumed run continues up to this count).
        batch_size: images per step.
        lr: Adam learning rate of the VQGAN and the discriminator (taming: 4.5e-6 × batch size).
        disc_start: first step with GAN terms; None = half of `steps` (taming ImageNet: 250001).
        disc_weight: scale of the adaptive GAN weight (taming ImageNet: 0.8).
        disc_channels, disc_layers: PatchGAN width and depth (taming: 64, 3).
        perceptual: "efficientnet", "lpips" (needs the two weight files) or "none".
        perceptual_weight: weight of the perceptual term (taming 1.0).
        lpips_weights, vgg_weights: local files for `perceptual="lpips"`.
        reconstruction: "l1" (taming) or "l2".
        codebook_weight: weight of the quantiser loss (taming 1.0).
        dead_code_restart: steps between dead-code restarts; 0 disables (taming has none).
        precision: "fp32" or "bf16" (autocast; nearest-code search stays fp32).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        seed: seeds initialisation, data order and augmentation.
        num_workers: DataLoader worker processes.
        log_every, checkpoint_every: intervals in steps.
        grid_images: eval images shown in the PNG grid.
    """

    vqgan: VQGANConfig = PRESETS["imagenet-f16-1024"]
    steps: int = 10_000
    batch_size: int = 12
    lr: float = 4.5e-6 * 12
    disc_start: int | None = None
    disc_weight: float = 0.8
    disc_channels: int = 64
    disc_layers: int = 3
    perceptual: str = "efficientnet"
    perceptual_weight: float = 1.0
    lpips_weights: str | None = None
    vgg_weights: str | None = None
    reconstruction: str = "l1"
    codebook_weight: float = 1.0
    dead_code_restart: int = 0
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    grid_images: int = 16

    def __post_init__(self) -> None:
        if self.perceptual not in PERCEPTUAL_KINDS:
            raise ValueError(f"perceptual must be one of {PERCEPTUAL_KINDS}, got {self.perceptual!r}")
        if self.reconstruction not in RECONSTRUCTION_KINDS:
            raise ValueError(
                f"reconstruction must be one of {RECONSTRUCTION_KINDS}, got {self.reconstruction!r}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "disc_channels", "disc_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.dead_code_restart < 0 or self.num_workers < 0:
            raise ValueError("dead_code_restart and num_workers must be >= 0")

    @property
    def gan_start(self) -> int:
        """The resolved `disc_start`."""
        return self.steps // 2 if self.disc_start is None else self.disc_start

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["vqgan"] = self.vqgan.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerTrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TokenizerTrainingConfig field(s) {unknown}")
        data = dict(data)
        if isinstance(data.get("vqgan"), dict):
            data["vqgan"] = VQGANConfig.from_dict(data["vqgan"])
        return cls(**data)


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run produced."""

    steps: int  # global step reached
    start_step: int  # 0, or the step a resumed run started from
    out_dir: Path
    model_dir: Path  # load with tokenizer.load_vqgan
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

    model = VQGAN(config.vqgan).to(device)
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
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=betas)
    disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    restarter = DeadCodeRestarter(config.vqgan.codebook_size, config.dead_code_restart or 1)

    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        stored = VQGANConfig.from_dict(state["config"]["vqgan"])
        if stored != config.vqgan:
            raise ValueError(f"{state_path} was trained with a different VQGAN config: {stored}")
        model.load_state_dict(state["model"])
        discriminator.load_state_dict(state["discriminator"])
        optimizer.load_state_dict(state["optimizer"])
        disc_optimizer.load_state_dict(state["disc_optimizer"])
        restarter.load_state_dict(state["code_usage"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        logger.info("resuming %s at step %d", out_dir, step)
    elif resume:
        logger.info("nothing to resume in %s; starting a fresh run", out_dir)
    start_step = step
    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    if eval_images is None:
        eval_images = _eval_images(dataset, config.grid_images)
    initial = measure_reconstruction(model, eval_images).report
    _append_log(log_path, {"event": "eval", "step": step, **initial.as_dict()})

    def checkpoint() -> None:
        save_vqgan(model, out_dir / MODEL_DIR)
        _save_training_state(
            out_dir,
            {
                "step": step,
                "config": config.to_dict(),
                "model": model.state_dict(),
                "discriminator": discriminator.state_dict(),
                "optimizer": optimizer.state_dict(),
                "disc_optimizer": disc_optimizer.state_dict(),
                "code_usage": restarter.state_dict(),
                "rng": torch.get_rng_state(),
            },
        )

    loader = DataLoader(
        dataset,
        batch_sampler=EpochBatches(len(dataset), config.batch_size, config.seed, start_step=step),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: creating the iterator would otherwise draw from the global RNG, which a
        # resumed run has just restored, and shift every later random choice (dead-code restarts).
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + step),
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    window_counts = torch.zeros(config.vqgan.codebook_size, dtype=torch.long)
    # Sums and counts per logged quantity over the current log window (GAN terms only exist once active).
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    model.train()
    discriminator.train()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train-tokenizer", unit="step")
    batches = iter(loader)
    try:
        while step < config.steps:
            images = _images_of(next(batches)).to(device, non_blocking=True)
            with autocast:
                latents = model.encode_to_latents(images)  # (B, D, h, w)
                quantized = model.quantize(latents)
                reconstruction = model.decode_from_latents(quantized.quantized)
                # model.forward, unrolled to keep the latents for dead-code restarts
                output = VQGANOutput(
                    reconstruction, quantized.indices, quantized.codebook_loss, quantized.commitment_loss
                )
                losses = objective.generator_loss(images, output, step, model.last_decoder_layer)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            optimizer.step()
            record = {name: float(value.detach()) for name, value in losses._asdict().items()}
            if objective.gan_factor(step) > 0:
                with autocast:
                    disc_losses = objective.discriminator_loss(images, reconstruction, step)
                disc_optimizer.zero_grad(set_to_none=True)
                disc_losses.total.backward()
                disc_optimizer.step()
                record.update(
                    disc_loss=float(disc_losses.total.detach()),
                    logits_real=float(disc_losses.logits_real),
                    logits_fake=float(disc_losses.logits_fake),
                )
            window_counts += code_counts(quantized.indices.detach().cpu(), window_counts.numel())
            step += 1
            if config.dead_code_restart:
                restarter.observe(quantized.indices)
                restarted = restarter.maybe_restart(step, model.quantize, latents)
                if restarted:
                    _append_log(log_path, {"event": "restart", "step": step, "codes": restarted})
            for name, value in record.items():
                totals[name] = totals.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                means = {name: value / counts[name] for name, value in totals.items()}
                usage = usage_from_counts(window_counts)
                _append_log(
                    log_path,
                    {
                        "step": step,
                        **means,
                        "codebook_fraction_used": usage.fraction_used,
                        "perplexity": usage.perplexity,
                        "seconds": round(time.time() - started, 2),
                    },
                )
                bar.set_postfix(loss=f"{means['total']:.4f}", rec=f"{means['reconstruction']:.4f}")
                totals.clear()
                counts.clear()
                window_counts.zero_()
            if step % config.checkpoint_every == 0:
                checkpoint()
    finally:
        bar.close()
    checkpoint()

    measured = measure_reconstruction(model, eval_images)
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
