"""VQGAN training objective: taming's `VQLPIPSWithDiscriminator` (reconstruction + perceptual + GAN + VQ).

Generator loss, as taming computes it:
    nll  = mean(|x − x̂|) + perceptual_weight · mean(d_perceptual(x, x̂))     (L1; L2 optional)
    g    = −mean(D(x̂))                                                       (hinge generator term)
    λ    = disc_weight · ‖∇_last nll‖ / (‖∇_last g‖ + 1e-4), clamped to [0, 1e4], detached
    loss = nll + λ · disc_factor(step) · g + codebook_weight · qloss
where ∇_last is the gradient w.r.t. the decoder's last conv weight, qloss = commitment + β·codebook
(`VQGANOutput.quantizer_loss`), and disc_factor is 0 before `disc_start`.
Discriminator loss: disc_factor(step) · ½(mean(relu(1 − D(x))) + mean(relu(1 + D(x̂)))).

Before `disc_start` the GAN terms are exactly zero in taming; here they are skipped (not computed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.vqgan import VQGANOutput

RECONSTRUCTION_KINDS = ("l1", "l2")


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½(mean(relu(1 − real)) + mean(relu(1 + fake))), taming's `hinge_d_loss`."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(
    nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float
) -> torch.Tensor:
    """taming's `calculate_adaptive_weight`: balance the GAN gradient against the reconstruction one."""
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    weight = torch.norm(nll_grad) / (torch.norm(gan_grad) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


class GeneratorLoss(NamedTuple):
    """The VQGAN's loss and its parts (scalars)."""

    total: torch.Tensor
    reconstruction: torch.Tensor  # mean L1 (or L2) pixel error
    perceptual: torch.Tensor  # mean perceptual distance (0 without a perceptual network)
    quantizer: torch.Tensor  # commitment + β·codebook
    gan: torch.Tensor  # −mean(D(x̂)) (0 before disc_start)
    gan_weight: torch.Tensor  # adaptive λ (0 before disc_start)


class DiscriminatorLoss(NamedTuple):
    """The discriminator's hinge loss and its mean logits (scalars)."""

    total: torch.Tensor
    logits_real: torch.Tensor
    logits_fake: torch.Tensor


class VQGANLoss(nn.Module):
    """taming's VQLPIPSWithDiscriminator with a pluggable perceptual network.

    Args:
        discriminator: the PatchGAN (trained by `discriminator_loss`).
        perceptual: a module (x, x̂) -> (B,) distances, or None to skip the perceptual term.
        perceptual_weight: weight of the perceptual term (taming 1.0).
        reconstruction: "l1" (taming) or "l2".
        codebook_weight: weight of the quantiser loss (taming 1.0).
        disc_weight: scale of the adaptive GAN weight (taming's ImageNet config: 0.8).
        disc_factor: GAN factor once active (taming 1.0).
        disc_start: first step at which the GAN terms are active.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        perceptual: nn.Module | None,
        *,
        perceptual_weight: float = 1.0,
        reconstruction: str = "l1",
        codebook_weight: float = 1.0,
        disc_weight: float = 0.8,
        disc_factor: float = 1.0,
        disc_start: int = 0,
    ):
        super().__init__()
        if reconstruction not in RECONSTRUCTION_KINDS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTION_KINDS}, got {reconstruction!r}")
        self.discriminator = discriminator
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.reconstruction = reconstruction
        self.codebook_weight = codebook_weight
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor
        self.disc_start = disc_start

    def gan_factor(self, step: int) -> float:
        """taming's `adopt_weight`: 0 before `disc_start`, `disc_factor` from then on."""
        return self.disc_factor if step >= self.disc_start else 0.0

    def generator_loss(
        self, images: torch.Tensor, output: VQGANOutput, step: int, last_layer: torch.Tensor
    ) -> GeneratorLoss:
        """Loss of the VQGAN for one batch.

        Args:
            images: (B, C, H, W) originals in [-1, 1].
            output: the VQGAN's forward output for `images`.
            step: global step (decides whether the GAN terms are active).
            last_layer: the decoder's last conv weight (`VQGAN.last_decoder_layer`).
        """
        reconstructions = output.reconstruction
        difference = images - reconstructions
        pixel = difference.abs() if self.reconstruction == "l1" else difference.pow(2)
        reconstruction = pixel.mean()
        zero = reconstruction.new_zeros(())
        perceptual = zero
        if self.perceptual is not None and self.perceptual_weight > 0:
            perceptual = self.perceptual(images, reconstructions).mean()
        nll = reconstruction + self.perceptual_weight * perceptual
        quantizer = output.quantizer_loss
        total = nll + self.codebook_weight * quantizer
        gan, gan_weight = zero, zero
        factor = self.gan_factor(step)
        if factor > 0:
            gan = -self.discriminator(reconstructions).mean()
            if torch.is_grad_enabled():
                gan_weight = adaptive_gan_weight(nll, gan, last_layer, self.disc_weight)
            total = total + gan_weight * factor * gan
        return GeneratorLoss(
            total, reconstruction.detach(), perceptual.detach(), quantizer.detach(), gan.detach(), gan_weight
        )

    def discriminator_loss(
        self, images: torch.Tensor, reconstructions: torch.Tensor, step: int
    ) -> DiscriminatorLoss:
        """Hinge loss of the discriminator on originals vs (detached) reconstructions."""
        logits_real = self.discriminator(images.detach())
        logits_fake = self.discriminator(reconstructions.detach())
        total = self.gan_factor(step) * hinge_discriminator_loss(logits_real, logits_fake)
        return DiscriminatorLoss(total, logits_real.detach().mean(), logits_fake.detach().mean())
