"""Our transformer checkpoint format, and one `load_transformer` for it and for the reference `.pth`.

A checkpoint is a folder (the Hugging Face habit, STYLE.md §3)::

    config.json          {"format": "maskgit-transformer", "version": 1,
                          "model": TransformerConfig fields, "sampling": SamplingConfig fields}
    model.safetensors    the state dict, with the reference's key names

The sampling defaults travel with the weights so `maskgit sample` and the server decode the way
the exporter intended. Wrapped models (DDP, DeepSpeed engines, `torch.compile`) are unwrapped before
saving. Loading is strict: a missing, unexpected or mis-shaped key is an error that names it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from transformer.config import SamplingConfig, TransformerConfig
from transformer.convert import REFERENCE_NUM_HEADS, read_reference_checkpoint
from transformer.model import MaskTransformer, unwrap_model

FORMAT_NAME = "maskgit-transformer"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_OUR_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def load_state_dict_strictly(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(state_dict, strict=True)` with an error that lists every bad key.

    Raises:
        ValueError: naming missing keys, unexpected keys and shape mismatches (up to 10 of each).
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            more = f" … and {len(items) - 10} more" if len(items) > 10 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:10])}{more}")
    if problems:
        raise ValueError(f"{source} does not match the MaskTransformer layout: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def save_transformer(model: nn.Module, directory: str | Path, sampling: SamplingConfig | None = None) -> Path:
    """Write `config.json` + `model.safetensors` into `directory` (created if needed).

    Args:
        model: a MaskTransformer, possibly wrapped (DDP, DeepSpeed engine, torch.compile).
        directory: output folder.
        sampling: sampling defaults to store next to the weights (default: `SamplingConfig()`).

    Returns:
        the folder path.
    """
    transformer = unwrap_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu().contiguous() for key, value in transformer.state_dict().items()}
    save_file(state_dict, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": transformer.config.to_dict(),
        "sampling": (sampling or SamplingConfig()).to_dict(),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return directory


def _our_folder(path: Path) -> Path | None:
    """The checkpoint folder if `path` is one of ours (or a file inside one), else None."""
    if path.is_dir():
        return path
    if path.name in _OUR_FILES:
        return path.parent
    return None


def _read_config_document(folder: Path) -> dict:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}; not a transformer checkpoint folder")
    try:
        document = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: invalid JSON ({error})") from error
    if document.get("format") != FORMAT_NAME:
        raise ValueError(f"{config_path}: format is {document.get('format')!r}, expected {FORMAT_NAME!r}")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: version {document.get('version')!r} is not supported ({FORMAT_VERSION})"
        )
    return document


def read_transformer_config(path: str | Path) -> TransformerConfig:
    """The `TransformerConfig` of a checkpoint (ours or a reference `.pth`) without building the model."""
    path = Path(path)
    folder = _our_folder(path)
    if folder is not None:
        return TransformerConfig.from_dict(_read_config_document(folder)["model"])
    return read_reference_checkpoint(path).config


def load_transformer(
    path: str | Path,
    *,
    num_classes: int | None = None,
    codebook_size: int | None = None,
    num_heads: int = REFERENCE_NUM_HEADS,
    map_location: str | torch.device = "cpu",
) -> MaskTransformer:
    """Load a transformer from our folder format or from a valeoai `.pth`, strictly, in eval mode.

    Args:
        path: our checkpoint folder (or its config.json / model.safetensors), or a reference `.pth`.
        num_classes: only for reference files with a non-released vocabulary (see `convert.py`).
        codebook_size: alternatively to `num_classes`.
        num_heads: only for reference files of a non-reference size (every reference size uses 16).
        map_location: device for the weights.

    Returns:
        MaskTransformer in eval mode.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no transformer checkpoint at {path}")
    folder = _our_folder(path)
    if folder is not None:
        config = TransformerConfig.from_dict(_read_config_document(folder)["model"])
        weights_path = folder / WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
        state_dict = load_file(weights_path, device=str(map_location))
        source = str(weights_path)
    else:
        reference = read_reference_checkpoint(
            path, num_classes=num_classes, codebook_size=codebook_size, num_heads=num_heads
        )
        config, state_dict, source = reference.config, reference.state_dict, str(path)
    model = MaskTransformer(config)
    load_state_dict_strictly(model, state_dict, source)
    return model.to(map_location).eval()


def load_sampling_config(path: str | Path) -> SamplingConfig:
    """Sampling defaults stored with a checkpoint; reference `.pth` files get the reference's settings
    for their resolution (256: 8 steps, Gumbel 4.5, CFG 3; 512: 15 steps, Gumbel 7, CFG 2.8)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no transformer checkpoint at {path}")
    folder = _our_folder(path)
    if folder is not None:
        stored = _read_config_document(folder).get("sampling")
        return SamplingConfig.from_dict(stored) if stored else SamplingConfig()
    return read_reference_checkpoint(path).sampling
