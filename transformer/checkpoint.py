"""The transformer in our weight format, and one `load_transformer` for it and for the reference `.pth`.

A checkpoint is a folder written by `weights.save_folder` (docs/architecture.md, "Weights")::

    config.json          {"format": "maskgit-transformer", "version": 2,
                          "config": TransformerConfig fields, "weights_sha256": ...,
                          "sampling": SamplingConfig fields, "class_names": [...] or null}
    model.safetensors    the state dict, with the reference's key names

The sampling defaults and the class names travel with the weights, so `maskgit sample` and the
server decode the way the exporter intended and can label their outputs. Version 1 folders (config
under "model", no class names) still load. Wrapped models (DDP, DeepSpeed engines, `torch.compile`)
are unwrapped before saving. Loading is strict: a missing, unexpected or mis-shaped key is an error
that names it. Every path may be local or an fsspec URL (`s3://bucket/run/export`).

Both transformer families share the folder format; the stored config's `family` ("maskgit" or
"halton"; folders saved before the field existed are "maskgit") decides which model is built. A
tied tensor (the v2 head, which is `tok_emb.weight`) is stored once, under its source key, and
restored on loading. Foreign `.pth` files are told apart by their keys: v2 (Halton-MaskGIT) files,
which have a class embedding `cls_emb.weight`, go to `transformer.convert_halton`, v1 files to
`transformer.convert`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from transformer.config import SamplingConfig, stored_sampling_config
from transformer.convert import REFERENCE_NUM_HEADS, read_reference_checkpoint
from transformer.convert_halton import is_halton_checkpoint, read_halton_checkpoint
from transformer.families import (
    ModelConfig,
    build_transformer,
    reference_sampling,
    transformer_config_from_dict,
)
from transformer.model import MaskPredictor, unwrap_model
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
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "load_class_names",
    "load_sampling_config",
    "load_transformer",
    "read_transformer_config",
    "save_transformer",
]

FORMAT_NAME = "maskgit-transformer"
FORMAT_VERSION = FOLDER_VERSION
_OUR_FILES = (CONFIG_FILE, WEIGHTS_FILE)
StorageOptions = Mapping[str, Any] | None


def save_transformer(
    model: nn.Module,
    directory: str | os.PathLike,
    sampling: SamplingConfig | None = None,
    *,
    class_names: Sequence[str] | None = None,
    storage_options: StorageOptions = None,
) -> Path | str:
    """Write `config.json` + `model.safetensors` into `directory` (created if needed), atomically.

    Args:
        model: a MaskTransformer or HaltonTransformer, possibly wrapped (DDP, DeepSpeed engine,
            torch.compile).
        directory: output folder, local or an fsspec URL.
        sampling: sampling defaults to store next to the weights (default: `SamplingConfig()`).
        class_names: the name of each class id (C names), stored with the model.
        storage_options: fsspec options for a URL.

    Returns:
        the folder (a `Path` for a local folder, the URL otherwise).

    Raises:
        ValueError: `class_names` does not hold one name per class.
    """
    transformer = unwrap_model(model)
    names = None if class_names is None else [str(name) for name in class_names]
    if names is not None and len(names) != transformer.config.num_classes:
        raise ValueError(
            f"{len(names)} class names given for a model of {transformer.config.num_classes} classes"
        )
    state_dict = {
        key: value for key, value in transformer.state_dict().items() if key not in transformer.tied_weights
    }
    return save_folder(
        directory,
        format_name=FORMAT_NAME,
        config=transformer.config.to_dict(),
        state_dict=state_dict,
        extra={"sampling": (sampling or SamplingConfig()).to_dict(), "class_names": names},
        storage_options=storage_options,
    )


def _our_folder(path: str | os.PathLike, storage_options: StorageOptions) -> str | None:
    """The checkpoint folder if `path` is one of ours (or a file inside one), else None."""
    if is_model_folder(path, storage_options):
        return os.fspath(path)
    folder, _, name = os.fspath(path).rstrip("/").rpartition("/")
    if is_local(path):
        folder, name = os.fspath(Path(path).parent), Path(path).name
    if name in _OUR_FILES and is_model_folder(folder, storage_options):
        return folder
    return None


def _read_record(folder: str, storage_options: StorageOptions) -> dict[str, Any]:
    return read_folder_config(folder, FORMAT_NAME, storage_options)


class ForeignCheckpoint(NamedTuple):
    """A valeoai `.pth` (v1 or v2) read into our terms, with the reference's sampling settings."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    sampling: SamplingConfig


@contextlib.contextmanager
def _reference(
    path: str | os.PathLike,
    storage_options: StorageOptions,
    *,
    num_heads: int | None = None,
    **options: Any,
) -> Iterator[ForeignCheckpoint]:
    """The valeoai `.pth` at `path`, v1 or v2 by its keys (downloaded first when it is a URL)."""
    if not exists(path, storage_options):
        raise FileNotFoundError(f"no transformer checkpoint at {os.fspath(path)}")
    with local_copy(path, storage_options) as local:
        if local.is_dir():
            raise FileNotFoundError(
                f"{os.fspath(path)} has no {CONFIG_FILE}; not a transformer checkpoint folder"
            )
        if is_halton_checkpoint(local):
            config, state_dict = read_halton_checkpoint(local, num_heads=num_heads)
            yield ForeignCheckpoint(config, state_dict, reference_sampling(config))
        else:
            heads = REFERENCE_NUM_HEADS if num_heads is None else num_heads
            reference = read_reference_checkpoint(local, num_heads=heads, **options)
            yield ForeignCheckpoint(reference.config, reference.state_dict, reference.sampling)


def read_transformer_config(path: str | os.PathLike, storage_options: StorageOptions = None) -> ModelConfig:
    """The config (TransformerConfig or HaltonConfig) of a checkpoint, ours or a reference `.pth`,
    without building the model."""
    folder = _our_folder(path, storage_options)
    if folder is not None:
        return transformer_config_from_dict(_read_record(folder, storage_options)["config"])
    with _reference(path, storage_options) as reference:
        return reference.config


def load_transformer(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    codebook_size: int | None = None,
    num_heads: int | None = None,
    map_location: str | torch.device = "cpu",
    storage_options: StorageOptions = None,
) -> MaskPredictor:
    """Load a transformer of either family from our folder format or a valeoai `.pth`, strictly.

    Args:
        path: our checkpoint folder (or its config.json / model.safetensors), or a reference `.pth`
            (v1 MaskGIT or v2 Halton-MaskGIT, told apart by its keys); local or an fsspec URL.
        num_classes: only for v1 reference files with a non-released vocabulary (see `convert.py`).
        codebook_size: alternatively to `num_classes`.
        num_heads: only for reference files of a non-reference size (v1: 16 in every reference
            size; v2: each reference width has its own).
        map_location: device for the weights.
        storage_options: fsspec options for URLs.

    Returns:
        MaskTransformer or HaltonTransformer (as the stored config's family says), in eval mode.
    """
    folder = _our_folder(path, storage_options)
    if folder is not None:
        config = transformer_config_from_dict(_read_record(folder, storage_options)["config"])
        state_dict = load_folder_weights(folder, map_location, storage_options)
        source = f"{folder}/{WEIGHTS_FILE}"
    else:
        options = {"num_classes": num_classes, "codebook_size": codebook_size, "num_heads": num_heads}
        with _reference(path, storage_options, **options) as reference:
            config, state_dict, source = reference.config, reference.state_dict, os.fspath(path)
    model = build_transformer(config)
    state_dict = dict(state_dict)
    for alias, key in model.tied_weights.items():  # stored once in our folders
        if alias not in state_dict and key in state_dict:
            state_dict[alias] = state_dict[key]
    load_state_dict_strictly(model, state_dict, source, what=f"the {type(model).__name__} layout")
    return model.to(map_location).eval()


def load_sampling_config(path: str | os.PathLike, storage_options: StorageOptions = None) -> SamplingConfig:
    """Sampling defaults stored with a checkpoint; reference `.pth` files get the reference's settings
    for their resolution (v1 256: 8 steps, Gumbel 4.5, CFG 3; 512: 15 steps, Gumbel 7, CFG 2.8) or,
    for v2 files, for their model size (32 Halton steps, constant CFG; `config.SAMPLING_PRESETS`)."""
    folder = _our_folder(path, storage_options)
    if folder is not None:
        stored = _read_record(folder, storage_options).get("sampling")
        return stored_sampling_config(stored) if stored else SamplingConfig()  # reads pre-split v2 pairs
    with _reference(path, storage_options) as reference:
        return reference.sampling


def load_class_names(
    path: str | os.PathLike, storage_options: StorageOptions = None
) -> tuple[str, ...] | None:
    """The class names stored with a checkpoint (one per class id), or None when none were stored.

    Reference `.pth` files and version 1 folders carry no names (None).
    """
    folder = _our_folder(path, storage_options)
    if folder is None:
        if not exists(path, storage_options):
            raise FileNotFoundError(f"no transformer checkpoint at {os.fspath(path)}")
        return None
    names = _read_record(folder, storage_options).get("class_names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{folder}/{CONFIG_FILE}: class_names must be a list of strings")
    return tuple(names)
