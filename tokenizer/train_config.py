"""`TokenizerTrainingConfig`: everything that decides a VQGAN training run (`tokenizer.train`).

A frozen dataclass whose defaults are taming's values where taming has one; `to_dict` / `from_dict`
round-trip it through `training_config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenizer.config import PRESETS, LlamaGenVQConfig, VQGANConfig
from tokenizer.families import tokenizer_config_from_dict
from tokenizer.losses import RECONSTRUCTION_KINDS
from tokenizer.perceptual import PERCEPTUAL_KINDS
from weights.config_base import FrozenConfig


@dataclass(frozen=True)
class TokenizerTrainingConfig(FrozenConfig):
    """Everything that decides a tokenizer training run (taming's values where it has one).

    Attributes:
        vqgan: the architecture: a VQGANConfig, or a LlamaGenVQConfig to train the v2 tokenizer family.
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

    vqgan: VQGANConfig | LlamaGenVQConfig = PRESETS["imagenet-f16-1024"]
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

    @classmethod
    def _from_stored(cls, values: dict[str, Any]) -> dict[str, Any]:
        if isinstance(values.get("vqgan"), dict):  # the nested architecture, of either family
            values["vqgan"] = tokenizer_config_from_dict(values["vqgan"])
        return values
