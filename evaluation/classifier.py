"""A small CNN classifier trained on real images, to check that samples show their conditioned class.

The quickstart reports "a classifier trained on the real data recognises the conditioned class in
>= 80 % of generated samples" (a cheap cousin of the paper's Classification Accuracy Score, which
trains the classifier the other way round). The default preset reaches about 91 % test accuracy on
Fashion-MNIST at 32x32 RGB (greyscale replicated) after 3 epochs over the 60k training images, about
30 s on 2 idle CPU cores (benchmarks/bench_evaluation.py; minutes when the cores are shared).

Inputs: `predict` and `train_classifier` take uint8 images (N, H, W, 3) or greyscale (N, H, W) in
[0, 255], or a float tensor (N, 3, H, W) in [-1, 1] (the decoder's range); images are resized to the
config's `image_size` when they differ. `forward` takes the [-1, 1] tensor.

The config travels with the weights: `save_classifier` writes `config.json` + `model.safetensors`.

Shapes: N images, K classes, H x W pixels.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the classifier: conv-BN-ReLU-maxpool stages, then a two-layer head.

    Attributes:
        num_classes: K.
        image_size: side of the input images (inputs of other sizes are resized).
        widths: output channels of each stage; each stage halves the resolution.
        hidden: width of the hidden fully connected layer.
        dropout: dropout before the last layer.
    """

    num_classes: int = 10
    image_size: int = 32
    widths: tuple[int, ...] = (16, 32, 64)
    hidden: int = 128
    dropout: float = 0.2

    def __post_init__(self):
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.widths)}")


PRESETS = {
    "fashion-mnist-32": ClassifierConfig(),
    "tiny": ClassifierConfig(widths=(8, 16), hidden=32),
}


class Classifier(nn.Module):
    """Conv stages + MLP head; logits (N, K) from images (N, 3, H, W) in [-1, 1]."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers, channels = [], 3
        for width in config.widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (N, K)

    @torch.no_grad()
    def predict_logits(self, images, *, batch_size: int = 512) -> np.ndarray:
        """Logits (N, K) float32 for uint8 (N, H, W[, 3]) arrays or [-1, 1] float (N, 3, H, W) tensors."""
        self.eval()
        device = next(self.parameters()).device
        inputs = to_classifier_input(images, self.config.image_size)
        outputs = [
            self(inputs[start : start + batch_size].to(device)).float().cpu()
            for start in range(0, len(inputs), batch_size)
        ]
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, self.config.num_classes), np.float32)

    def predict(self, images, *, batch_size: int = 512) -> np.ndarray:
        """Predicted class ids (N,) int64."""
        return self.predict_logits(images, batch_size=batch_size).argmax(axis=1).astype(np.int64)


def to_classifier_input(images, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W) / (N, H, W, 3) arrays or [-1, 1] float (N, 3, H, W) tensors -> (N, 3, S, S) float.

    Raises:
        ValueError: any other layout or dtype.
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        tensor = images.detach().float().cpu()
    else:
        array = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
        if array.dtype != np.uint8:
            raise ValueError(f"array images must be uint8 in [0, 255], got {array.dtype}")
        if array.ndim == 3:
            array = np.repeat(array[..., None], 3, axis=-1)  # greyscale -> RGB
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W) or (N, H, W, 3), got {array.shape}")
        writable = np.require(array, requirements="CW")  # read-only arrays (Ray's object store) copied
        tensor = torch.from_numpy(writable).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", align_corners=False)
    # Plain NCHW: the permuted (channels-last) layout made CPU training steps up to 10x slower here.
    return tensor.contiguous()


def train_classifier(
    images,
    labels: np.ndarray,
    *,
    config: ClassifierConfig | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> Classifier:
    """Train a classifier from scratch with AdamW and a one-cycle schedule, on CPU or the current GPU.

    Args:
        images: uint8 (N, H, W) / (N, H, W, 3) or float (N, 3, H, W) in [-1, 1].
        labels: (N,) class ids in [0, K).
        config: architecture (default: `PRESETS["fashion-mnist-32"]` with K from the labels).
        epochs: passes over the data.
        batch_size: images per step.
        learning_rate: peak learning rate.
        seed: seed of initialisation, dropout and shuffling (deterministic on CPU).
        progress: show a tqdm bar.

    Returns:
        The trained classifier in eval mode.
    """
    labels = np.asarray(labels, np.int64)
    if config is None:
        config = dataclasses.replace(PRESETS["fashion-mnist-32"], num_classes=int(labels.max()) + 1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(
            f"labels must lie in [0, {config.num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    # The whole run uses its own RNG state (initialisation, dropout, shuffling): the same seed gives the
    # same weights, and the caller's global RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _fit(Classifier(config), images, labels, epochs, batch_size, learning_rate, progress)
    return model.eval()


def _fit(model, images, labels, epochs, batch_size, learning_rate, progress) -> Classifier:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    inputs = to_classifier_input(images, model.config.image_size)  # (N, 3, S, S), held once in memory
    targets = torch.from_numpy(labels)
    steps_per_epoch = math.ceil(len(inputs) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    bar = tqdm(total=epochs * steps_per_epoch, desc="train classifier", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), batch_size):
            index = order[start : start + batch_size]
            logits = model(inputs[index].to(device))
            loss = F.cross_entropy(logits, targets[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model


def classifier_accuracy(classifier: Classifier, images, labels: np.ndarray) -> float:
    """Share of `images` whose predicted class equals `labels`."""
    return float((classifier.predict(images) == np.asarray(labels)).mean())


def save_classifier(classifier: Classifier, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` into `directory`; returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dataclasses.asdict(classifier.config)
    (directory / "config.json").write_text(json.dumps({"kind": "maskgit-classifier", **config}, indent=2))
    state = {key: value.detach().cpu().contiguous() for key, value in classifier.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    return directory


def load_classifier(directory: str | Path, *, device: torch.device | str = "cpu") -> Classifier:
    """Load a classifier written by `save_classifier` (strictly, no pickles).

    Raises:
        FileNotFoundError: the folder lacks `config.json` or `model.safetensors`.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a classifier folder: {name} is missing")
    config = json.loads((directory / "config.json").read_text())
    config.pop("kind", None)
    config["widths"] = tuple(config["widths"])
    classifier = Classifier(ClassifierConfig(**config))
    classifier.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return classifier.to(device).eval()
