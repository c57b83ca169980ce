"""The VQGAN in our weight format (a folder with `config.json` + `model.safetensors`), and its loader.

The config travels with the weights (docs/architecture.md, "Weights"): `save_vqgan` writes the
VQGANConfig next to the safetensors file through `weights.save_folder` (atomically, locally or at an
fsspec URL). `load_tokenizer` reads that folder, or hands a foreign checkpoint (taming's Lightning
`last.ckpt`, a bare state-dict `.pt`) to `tokenizer.convert`, the one reader of foreign formats.
Both tokenizer families live in the same folder format, told apart by the stored config's `family`
("vqgan" or "llamagen-vq"; folders saved before the field existed are VQGANs); a foreign file
holding a LlamaGen VQ (the v2 tokenizer, `vq_ds16_c2i.pt`) goes to `tokenizer.convert_llamagen`.
Loading is strict everywhere: a missing or unexpected key, or a shape mismatch, is an error that
names it. Nothing here executes pickles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokenizer.config import LlamaGenVQConfig, VQGANConfig
from tokenizer.convert import read_taming_checkpoint
from tokenizer.convert_llamagen import is_llamagen_checkpoint, read_llamagen_checkpoint
from tokenizer.families import Tokenizer, TokenizerConfig, build_tokenizer, tokenizer_config_from_dict
from tokenizer.llamagen import LlamaGenVQ
from tokenizer.vqgan import VQGAN
from weights import (
    CONFIG_FILE,
    FOLDER_VERSION,
    WEIGHTS_FILE,
    exists,
    is_local,
    is_model_folder,
    load_folder_weights,
    load_state_dict_strictly,
    local_copy,
    read_folder_config,
    save_folder,
    unwrap_model,
)
from weights import weights_digest as _folder_weights_digest

__all__ = [
    "CONFIG_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "load_tokenizer",
    "load_vqgan",
    "read_vqgan_config",
    "save_vqgan",
    "tokenizer_identity",
    "unwrap_model",
    "weights_digest",
    "weights_file",
]

FORMAT_NAME = "maskgit-vqgan"
FORMAT_VERSION = FOLDER_VERSION
StorageOptions = Mapping[str, Any] | None


def save_vqgan(
    model: nn.Module, directory: str | os.PathLike, *, storage_options: StorageOptions = None
) -> Path | str:
    """Write `model` (unwrapped) as `directory/config.json` + `directory/model.safetensors`, atomically.

    Args:
        model: a VQGAN or LlamaGenVQ, possibly wrapped (DDP, DeepSpeed engine, torch.compile).
        directory: a local folder or an fsspec URL (`s3://bucket/models/vqgan`).
        storage_options: fsspec options for a URL.

    Returns:
        The folder (a `Path` for a local folder, the URL otherwise).
    """
    model = unwrap_model(model)
    if not isinstance(model, VQGAN | LlamaGenVQ):
        raise ValueError(f"save_vqgan expects a VQGAN or LlamaGenVQ, got {type(model).__name__}")
    return save_folder(
        directory,
        format_name=FORMAT_NAME,
        config=model.config.to_dict(),
        state_dict=model.state_dict(),
        storage_options=storage_options,
    )


def read_vqgan_config(
    directory: str | os.PathLike, storage_options: StorageOptions = None
) -> TokenizerConfig:
    """The tokenizer config (VQGANConfig or LlamaGenVQConfig) stored in one of our folders (local or URL).

    Raises:
        FileNotFoundError: no `config.json` in `directory`.
        ValueError: not our format, an unsupported version, or an invalid config.
    """
    record = read_folder_config(directory, FORMAT_NAME, storage_options)
    try:
        return tokenizer_config_from_dict(record["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{os.fspath(directory)}/{CONFIG_FILE}: invalid tokenizer config: {error}") from None


def load_tokenizer(
    path: str | os.PathLike,
    *,
    config: TokenizerConfig | str | os.PathLike | None = None,
    map_location: str | torch.device = "cpu",
    storage_options: StorageOptions = None,
) -> Tokenizer:
    """Load a tokenizer (VQGAN or LlamaGenVQ) in eval mode from our folder format or a foreign checkpoint.

    The family comes from the folder's stored config, or for a foreign file from its key names.
    `load_vqgan` is the same function under its name from before the second family.

    Args:
        path: one of our model folders (`config.json` + `model.safetensors`); a taming Lightning
            `last.ckpt` (its `model.yaml` is looked up beside it or in `../configs/`); a LlamaGen VQ
            file (`vq_ds16_c2i.pt`); or a bare state-dict `.pt`/`.pth` file. A local path or an
            fsspec URL.
        config: for a taming checkpoint, a VQGANConfig or the path of taming's `model.yaml`
            (needed when none sits where `convert.find_taming_config` looks); for a LlamaGen file,
            a LlamaGenVQConfig (default: read from the shapes). For our folder, a config that must
            equal the stored one.
        map_location: device for the weights.
        storage_options: fsspec options for URLs.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: corrupt file, config mismatch, or a missing/unexpected key or shape mismatch.
    """
    if is_model_folder(path, storage_options):
        stored = read_vqgan_config(path, storage_options)
        if config is not None and not isinstance(config, VQGANConfig | LlamaGenVQConfig):
            raise ValueError(
                f"{path} stores its own config; pass a tokenizer config or nothing, not {config!r}"
            )
        if config is not None and config != stored:
            raise ValueError(f"config given for {path} differs from its stored {CONFIG_FILE}: {stored}")
        state_dict = load_folder_weights(path, map_location, storage_options)
        source = f"{os.fspath(path)}/{WEIGHTS_FILE}"
    else:
        stored, state_dict = _read_foreign(path, config, map_location, storage_options)
        source = os.fspath(path)
    model = build_tokenizer(stored)
    load_state_dict_strictly(model, state_dict, source, what=f"the {type(model).__name__} config")
    return model.to(map_location).eval()


load_vqgan = load_tokenizer  # the name from before LlamaGen VQ; loads either family


def _read_foreign(
    path: str | os.PathLike,
    config: TokenizerConfig | str | os.PathLike | None,
    map_location: str | torch.device,
    storage_options: StorageOptions,
) -> tuple[TokenizerConfig, dict[str, torch.Tensor]]:
    """A LlamaGen VQ or taming checkpoint's config and tensors; a URL is downloaded first (a taming
    one with its `model.yaml`)."""
    if not exists(path, storage_options):
        raise FileNotFoundError(f"VQGAN checkpoint {os.fspath(path)} does not exist")
    with local_copy(path, storage_options) as checkpoint:
        if isinstance(config, LlamaGenVQConfig) or (config is None and is_llamagen_checkpoint(checkpoint)):
            return read_llamagen_checkpoint(checkpoint, config=config)
        if config is None and not is_local(path):
            config = f"{os.fspath(path).rsplit('/', 1)[0]}/model.yaml"  # the released layout
        if config is None or isinstance(config, VQGANConfig) or is_local(config):
            return read_taming_checkpoint(checkpoint, config=config, map_location=map_location)
        with local_copy(config, storage_options) as yaml_path:
            return read_taming_checkpoint(checkpoint, config=yaml_path, map_location=map_location)


def weights_file(path: str | os.PathLike) -> Path:
    """The local file holding the weights: `model.safetensors` inside one of our folders, else `path`."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    return path


def weights_digest(path: str | os.PathLike, storage_options: StorageOptions = None) -> str:
    """sha256 hex digest of the weights (what the token store records as the tokenizer identity).

    For one of our folders this is the digest of `model.safetensors` (equal to `sha256sum` of it),
    recorded in `config.json` at save time; for a foreign checkpoint, of the file itself.
    `save_vqgan` writes byte-identical files for identical weights, so re-saving keeps the digest.
    """
    return _folder_weights_digest(path, storage_options)


def tokenizer_identity(path: str | os.PathLike, storage_options: StorageOptions = None) -> dict[str, Any]:
    """{"config": tokenizer config dict, "weights_sha256": digest of the weights}: what a store records.

    `path` is a local path or a URL; our folders are identified from their `config.json` alone, a
    foreign checkpoint is loaded for its config.
    """
    try:
        config = read_vqgan_config(path, storage_options=storage_options)
    except (FileNotFoundError, ValueError):  # a foreign checkpoint: its config comes from loading it
        config = load_vqgan(path, storage_options=storage_options).config
    digest = weights_digest(path, storage_options=storage_options)
    return {"config": config.to_dict(), "weights_sha256": digest}
