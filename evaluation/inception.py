"""The TF-FID InceptionV3: the network behind published FID / IS numbers, rebuilt in plain torch.

Published FIDs (and the reference's, valeoai v1 through torch-fidelity's `inception-v3-compat`) come
from the 2015-12-05 TensorFlow InceptionV3 graph. Its PyTorch ports (pytorch-fid's `FIDInceptionA/C/E`,
torch-fidelity's `FeatureExtractorInceptionV3`) differ from torchvision's InceptionV3 in four places,
all reproduced here:

- a 1008-way classifier (`fc`, 2048 -> 1008), not 1000-way;
- the average pools inside Mixed_5*, Mixed_6b-e and Mixed_7b exclude the zero padding from the mean
  (`count_include_pad=False`), as TensorFlow does;
- the last block (Mixed_7c) pools its fourth branch with a *max* pool, a quirk of that TF graph;
- inputs are uint8 [0, 255] resized to 299x299 with TensorFlow 1's `resize_bilinear`
  (align_corners=False, no half-pixel centres: source = dest * in/out), then mapped by (x - 128) / 128.

Why a re-implementation and not torch-fidelity: torch-fidelity 0.4.0 imports torchvision when the
package is imported, and torchvision cannot be installed beside this project's torch build. The
architecture, the preprocessing and the state-dict keys are kept identical to torch-fidelity's, so
the released weights file (`pt_inception-2015-12-05-6726825d.pth` from pytorch-fid, or torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, same tensors) loads strictly with
`torch.load(weights_only=True)`. The weights are never downloaded here; the user supplies the path.

Outputs: `pool_features` (B, 2048), the pool3 activations used for FID and precision/recall, and
`logits_unbiased` (B, 1008) = pool_features @ fc.weight.T without the bias, which torch-fidelity (and
so the reference) uses for the Inception Score.

Shapes: B batch; images (B, 3, H, W) uint8 on input; spatial sizes are noted on each line.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008
WEIGHTS_FILE_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
WEIGHTS_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1 `resize_bilinear(align_corners=False)`: the resize every published FID went through.

    TF1 maps output pixel i to source coordinate i * in/out (no half-pixel offset, unlike
    `F.interpolate`), interpolates between floor and floor + 1 (clamped at the border), and does the
    coordinate arithmetic in float32. Written by hand because no torch function has these semantics.

    Args:
        images: (B, C, H, W) floating point.
        size: output side.

    Returns:
        (B, C, size, size) in the input dtype.
    """
    if not images.is_floating_point():
        raise ValueError(f"resize_bilinear_tf1 needs a floating point tensor, got {images.dtype}")
    height, width = images.shape[-2:]

    def source_axis(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / size, dtype=torch.float32)
        coordinate = torch.arange(size, dtype=torch.float32, device=images.device) * scale.to(images.device)
        low = coordinate.long()  # coordinates are >= 0, so truncation is floor
        high = (low + 1).clamp_max(in_size - 1)
        return low, high, (coordinate - low.float()).to(images.dtype)

    y_low, y_high, dy = source_axis(height)
    x_low, x_high, dx = source_axis(width)
    top, bottom = images[:, :, y_low, :], images[:, :, y_high, :]  # (B, C, size, W)
    dx = dx.view(1, 1, 1, size)
    top = top[..., x_low] + (top[..., x_high] - top[..., x_low]) * dx  # (B, C, size, size)
    bottom = bottom[..., x_low] + (bottom[..., x_high] - bottom[..., x_low]) * dx
    return top + (bottom - top) * dy.view(1, 1, size, 1)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU; the keys are `conv.*` and `bn.*`."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pool divides by the number of real (unpadded) pixels under the window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction block (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b/c/d/e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction block (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b, and Mixed_7c with `max_pool_branch=True`)."""

    def __init__(self, in_channels: int, *, max_pool_branch: bool):
        super().__init__()
        self.max_pool_branch = max_pool_branch  # the TF graph's Mixed_7c quirk
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool_branch:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class InceptionOutputs(NamedTuple):
    """What the TF-FID InceptionV3 gives for a batch."""

    pool_features: torch.Tensor  # (B, 2048) float32, for FID and precision/recall
    logits_unbiased: torch.Tensor  # (B, 1008) float32, for the Inception Score


class FIDInceptionV3(nn.Module):
    """The TF-FID InceptionV3 with torch-fidelity's / pytorch-fid's state-dict keys."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)
        self.fc = nn.Linear(POOL_FEATURES, NUM_LOGITS)

    def forward(self, images: torch.Tensor) -> InceptionOutputs:
        """Pool features and unbiased logits of uint8 images.

        Args:
            images: (B, 3, H, W) uint8 in [0, 255], any H and W.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
        dtype = self.fc.weight.dtype
        x = resize_bilinear_tf1(images.to(dtype), INPUT_SIZE)  # (B, 3, 299, 299)
        x = (x - 128) / 128
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        pool = x.mean(dim=(2, 3))  # (B, 2048)
        logits_unbiased = pool @ self.fc.weight.T  # (B, 1008), no bias, as torch-fidelity's IS
        return InceptionOutputs(pool.float(), logits_unbiased.float())


def missing_weights_message(path: str | Path) -> str:
    """The error a user sees when the Inception weights file is not where they said."""
    names = " or ".join(WEIGHTS_FILE_NAMES)
    urls = "\n  ".join(WEIGHTS_URLS)
    return (
        f"InceptionV3 FID weights not found at {path}. The `inception` evaluator needs the TF-FID "
        f"InceptionV3 weights file ({names}, about 91 MB); nothing is downloaded at run time. Fetch it "
        f"on a machine with internet access from one of\n  {urls}\nand pass its path "
        "(--inception-weights PATH), or use --evaluator efficientnet-lite0 (always available offline, "
        "not comparable with published FID)."
    )


def load_fid_inception(path: str | Path, *, dtype: torch.dtype = torch.float32) -> FIDInceptionV3:
    """Build the TF-FID InceptionV3 and load a weights file strictly, without executing pickles.

    Args:
        path: a `.pth` state dict (pytorch-fid / torch-fidelity release) or a `.safetensors` file.
        dtype: float32 (as the reference) or float64.

    Raises:
        FileNotFoundError: the file does not exist (the message says which file is needed).
        ValueError: the file is not a state dict of this architecture (names the keys that differ).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(missing_weights_message(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state_dict).__name__})")
    model = FIDInceptionV3()
    expected = set(model.state_dict())
    # Older exports omit BatchNorm's `num_batches_tracked` counters; torch fills them in on load.
    missing = sorted(k for k in expected - set(state_dict) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a TF-FID InceptionV3 state dict: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path} does not fit the TF-FID InceptionV3: {error}") from None
    return model.to(dtype).eval().requires_grad_(False)
