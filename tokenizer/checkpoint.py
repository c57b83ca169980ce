"""Our VQGAN weight format (a folder with `config.json` + `model.safetensors`), strict loading, digests.

The config travels with the weights (shared/STYLE.md §3): `save_vqgan` writes the VQGANConfig and a
format tag next to the safetensors file; `load_vqgan` reads that folder, or hands a foreign checkpoint
(taming's Lightning `last.ckpt`, a bare state-dict `.pt`) to `tokenizer.convert`, the one module that
reads foreign formats. Loading is strict everywhere: a missing or unexpected key, or a shape mismatch,
is an error that names it. Nothing here executes pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tokenizer.config import VQGANConfig
from tokenizer.vqgan import VQGAN

FORMAT_NAME = "maskgit-vqgan"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DeepSpeed (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def load_state_dict_strictly(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `state_dict` into `model`, or raise naming every missing/unexpected key and shape mismatch.

    Raises:
        ValueError: the key sets differ or a shape differs; the message names the keys and `source`.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_shorten(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_shorten(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not match the VQGAN config: " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), strict=True)


def _shorten(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def save_vqgan(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write `model` (unwrapped) as `directory/config.json` + `directory/model.safetensors`.

    Files are written under temporary names and renamed, so a crash never leaves a half-written
    checkpoint under the final names.

    Returns:
        The directory.
    """
    model = unwrap_model(model)
    if not isinstance(model, VQGAN):
        raise ValueError(f"save_vqgan expects a VQGAN, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    weights_tmp = directory / f".{WEIGHTS_FILE}.tmp"
    # One metadata entry only: safetensors writes a multi-key metadata map in hash order, which would
    # make the file bytes (and `weights_digest`) differ between saves of the same weights.
    save_file(tensors, str(weights_tmp), metadata={"format": f"{FORMAT_NAME}/{FORMAT_VERSION}"})
    config_tmp = directory / f".{CONFIG_FILE}.tmp"
    record = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": model.config.to_dict()}
    config_tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    os.replace(config_tmp, directory / CONFIG_FILE)
    return directory


def read_vqgan_config(directory: str | os.PathLike) -> VQGANConfig:
    """The VQGANConfig stored in one of our model folders.

    Raises:
        FileNotFoundError: no `config.json` in `directory`.
        ValueError: not our format, an unsupported version, or an invalid config.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} config (format tag {record.get('format')!r})")
    if record.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {record.get('version')!r}; this code reads version {FORMAT_VERSION}"
        )
    try:
        return VQGANConfig.from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid VQGAN config: {error}") from None


def load_vqgan(
    path: str | os.PathLike,
    *,
    config: VQGANConfig | str | os.PathLike | None = None,
    map_location: str | torch.device = "cpu",
) -> VQGAN:
    """Load a VQGAN in eval mode from our folder format or a taming checkpoint.

    Args:
        path: one of our model folders (`config.json` + `model.safetensors`); a taming Lightning
            `last.ckpt` (its `model.yaml` is looked up beside it or in `../configs/`); or a bare
            state-dict `.pt`/`.pth` file.
        config: for a foreign checkpoint, a VQGANConfig or the path of taming's `model.yaml`
            (needed when none sits where `convert.find_taming_config` looks). For our folder, a
            VQGANConfig that must equal the stored one.
        map_location: device for the weights.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: corrupt file, config mismatch, or a missing/unexpected key or shape mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VQGAN checkpoint {path} does not exist")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        stored = read_vqgan_config(path)
        if config is not None and not isinstance(config, VQGANConfig):
            raise ValueError(f"{path} stores its own config; pass a VQGANConfig or nothing, not {config!r}")
        if config is not None and config != stored:
            raise ValueError(f"config given for {path} differs from its stored {CONFIG_FILE}: {stored}")
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_FILE} in {path}")
        try:
            state_dict = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"cannot read {weights} (corrupt or truncated?): {error}") from None
        model = VQGAN(stored)
        load_state_dict_strictly(model, state_dict, source=str(weights))
        return model.to(map_location).eval()
    from tokenizer.convert import load_taming_vqgan  # the one reader of foreign formats

    return load_taming_vqgan(path, config=config, map_location=map_location)


def weights_file(path: str | os.PathLike) -> Path:
    """The file holding the weights: `model.safetensors` inside one of our folders, else `path` itself."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    return path


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 hex digest of the weights file (what the token store records as the tokenizer identity).

    For one of our folders this is the digest of `model.safetensors` (equal to `sha256sum` of it);
    for a foreign checkpoint, of the file itself. `save_vqgan` writes byte-identical files for
    identical weights, so re-saving a model keeps its digest.
    """
    digest = hashlib.sha256()
    with weights_file(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
