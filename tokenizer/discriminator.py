"""PatchGAN discriminator for VQGAN training: taming's `NLayerDiscriminator` (from pix2pix).

Follows taming `modules/discriminator/model.py`: 4×4 convs, LeakyReLU(0.2), BatchNorm (convs before a
BatchNorm have no bias), N(0, 0.02) conv init and N(1, 0.02) BatchNorm scale init; keys `main.{i}.*`
as in taming, so a taming `loss.discriminator.*` state dict (prefix removed) loads into it.

Shapes: images (B, C, H, W) -> patch logits (B, 1, H', W'), one real/fake score per receptive field.
"""

from __future__ import annotations

import torch
from torch import nn


def init_weights(module: nn.Module) -> None:
    """taming's `weights_init`: conv weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: `num_layers` stride-2 convs, one stride-1 conv, then a 1-channel logit map.

    Args:
        in_channels: image channels.
        channels: width of the first conv (taming `ndf`, 64); doubles per layer up to 8×.
        num_layers: stride-2 layers (taming `n_layers`, 3).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            previous, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                # no bias: the BatchNorm right after has its own shift
                nn.Conv2d(channels * previous, channels * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)  # (B, 1, H', W')
