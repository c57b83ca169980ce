"""Reader of foreign VQGAN checkpoints: taming-transformers Lightning `last.ckpt` + `model.yaml`.

The only module that reads a foreign tokenizer format (docs/architecture.md, "Weights"). It only
reads: `read_taming_checkpoint` returns the config and the state dict, `tokenizer.checkpoint.load_tokenizer`
builds the model from them, and the `maskgit convert-vqgan` command writes our folder. The released
valeoai tokenizer is taming's `vqgan_imagenet_f16_1024` (docs/reference.md#tokenizer): a
PyTorch-Lightning checkpoint whose `state_dict` holds the VQModel weights plus `loss.*` entries
(LPIPS and discriminator), next to a `model.yaml` (`model.params.{embed_dim, n_embed, ddconfig}`).

Safety and strictness:
- `.ckpt` files are read with `torch.load(weights_only=True)`. Old Lightning pickles the
  ModelCheckpoint *class* as a dict key of `callbacks`; only those names are allow-listed, bound to an
  inert stand-in class. Any other global is refused with a message naming it.
- `loss.*` keys are dropped; the loader then checks every other key and shape strictly. A corrupt or
  truncated file is an error naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from tokenizer.config import VQGANConfig
from tokenizer.convert_llamagen import is_llamagen_checkpoint

IGNORED_PREFIXES = ("loss.",)

# taming `ddconfig` key -> VQGANConfig field.
_DDCONFIG_FIELDS = {
    "z_channels": "z_channels",
    "resolution": "resolution",
    "in_channels": "in_channels",
    "out_ch": "out_channels",
    "ch": "ch",
    "ch_mult": "ch_mult",
    "num_res_blocks": "num_res_blocks",
    "attn_resolutions": "attn_resolutions",
    "dropout": "dropout",
}
# ddconfig keys accepted only at the value under which taming's code equals ours.
_DDCONFIG_REQUIRED_VALUES = {
    "double_z": False,
    "resamp_with_conv": True,
    "give_pre_end": False,
    "tanh_out": False,
    "use_linear_attn": False,
    "attn_type": "vanilla",
}
# VQModel params that do not change the network (training / logging options).
_HARMLESS_MODEL_PARAMS = {
    "lossconfig",
    "ckpt_path",
    "ignore_keys",
    "image_key",
    "colorize_nlabels",
    "monitor",
}


class _LightningCallbackClass:
    """Inert stand-in for Lightning callback classes pickled as `callbacks` dict keys; never instantiated."""


_ALLOWED_LIGHTNING_GLOBALS = [
    (_LightningCallbackClass, f"{package}.callbacks.{module}.{name}")
    for package in ("pytorch_lightning", "lightning.pytorch")
    for module, name in (("model_checkpoint", "ModelCheckpoint"), ("early_stopping", "EarlyStopping"))
]


def config_from_taming_yaml(path: str | os.PathLike) -> VQGANConfig:
    """Map taming's `model.params.{embed_dim, n_embed, ddconfig}` onto a VQGANConfig.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, not a taming VQModel config, or an option our model does not implement.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"taming config {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    model = document.get("model") if isinstance(document, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise ValueError(f"{path} has no model.params.ddconfig (not a taming VQGAN config)")
    target = str(model.get("target", ""))
    if target and not target.endswith(".VQModel"):
        raise ValueError(f"{path}: model.target {target!r} is not supported; only taming's VQModel is")
    if params.get("remap") is not None:
        raise ValueError(f"{path}: model.params.remap is not supported (it renumbers the codebook)")
    unknown_params = sorted(
        set(params)
        - {"embed_dim", "n_embed", "ddconfig", "remap", "sane_index_shape"}
        - _HARMLESS_MODEL_PARAMS
    )
    if unknown_params:
        raise ValueError(f"{path}: unsupported model.params {unknown_params}")
    ddconfig = params["ddconfig"]
    for key, required in _DDCONFIG_REQUIRED_VALUES.items():
        if key in ddconfig and ddconfig[key] != required:
            raise ValueError(
                f"{path}: ddconfig.{key}={ddconfig[key]!r} is not supported (needs {required!r})"
            )
    unknown = sorted(set(ddconfig) - set(_DDCONFIG_FIELDS) - set(_DDCONFIG_REQUIRED_VALUES))
    if unknown:
        raise ValueError(f"{path}: unsupported ddconfig keys {unknown}")
    fields: dict[str, Any] = {
        ours: ddconfig[theirs] for theirs, ours in _DDCONFIG_FIELDS.items() if theirs in ddconfig
    }
    for key in ("embed_dim", "n_embed"):
        if key not in params:
            raise ValueError(f"{path}: model.params.{key} is missing")
        fields[key] = params[key]
    try:
        return VQGANConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def find_taming_config(checkpoint: str | os.PathLike) -> Path | None:
    """The `model.yaml` belonging to `checkpoint`, if one is where taming or valeoai put it.

    Looks at `<dir>/model.yaml` (the released layout and valeoai before Feb 2024),
    `<dir>/../configs/model.yaml` (valeoai v1 HEAD: `configs/` beside `ckpts/`), and a single
    `<dir>/../configs/*-project.yaml` (taming's own `logs/<run>/` layout).
    """
    folder = Path(checkpoint).resolve().parent
    for candidate in (folder / "model.yaml", folder.parent / "configs" / "model.yaml"):
        if candidate.is_file():
            return candidate
    projects = sorted((folder.parent / "configs").glob("*-project.yaml"))
    return projects[0] if len(projects) == 1 else None


def read_taming_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The model tensors of a Lightning checkpoint (its `state_dict`) or of a bare state-dict file.

    `loss.*` entries are dropped. Read with `weights_only=True` and an explicit allow-list.

    Raises:
        ValueError: corrupt/truncated file, a refused pickle global, or no state dict inside.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_ALLOWED_LIGHTNING_GLOBALS):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise ValueError(
                f"{path} needs the Python object {refused.group(1)} to load; checkpoints are never "
                "unpickled with code execution. Extract its 'state_dict' in a trusted environment "
                "(torch.save(ckpt['state_dict'], 'state_dict.pt')) and convert that file"
            ) from None
        raise ValueError(f"cannot read checkpoint {path} (corrupt or truncated?): {error}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"cannot read checkpoint {path} (corrupt or truncated?): {error}") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state_dict = payload["state_dict"]
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict = payload
    else:
        keys = sorted(map(str, payload))[:10] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} holds no 'state_dict' of tensors (top level: {keys})")
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path}: state_dict entries that are not tensors: {not_tensors[:10]}")
    return {k: v for k, v in state_dict.items() if not k.startswith(IGNORED_PREFIXES)}


def _resolve_config(checkpoint: Path, config: VQGANConfig | str | os.PathLike | None) -> VQGANConfig:
    if isinstance(config, VQGANConfig):
        return config
    if config is not None:
        return config_from_taming_yaml(config)
    found = find_taming_config(checkpoint)
    if found is None:
        raise ValueError(
            f"no model.yaml found for {checkpoint} (looked in {checkpoint.parent} and "
            f"{checkpoint.parent.parent / 'configs'}); pass the taming config explicitly"
        )
    return config_from_taming_yaml(found)


class TamingCheckpoint(NamedTuple):
    """A taming checkpoint read into our terms; `state_dict` has our key names (no `loss.*`)."""

    config: VQGANConfig
    state_dict: dict[str, torch.Tensor]


def read_taming_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    config: VQGANConfig | str | os.PathLike | None = None,
    map_location: str | torch.device = "cpu",
) -> TamingCheckpoint:
    """The VQGANConfig and the model tensors of a taming checkpoint (not yet checked against each other).

    Args:
        checkpoint: Lightning `last.ckpt` or a bare state-dict file, on the local disk.
        config: a VQGANConfig, a path to taming's `model.yaml`, or None to find `model.yaml` beside
            the checkpoint (see `find_taming_config`).
        map_location: device for the tensors.

    Raises:
        FileNotFoundError: missing checkpoint or config file.
        ValueError: no config found, a corrupt file, or an unsupported taming option (named).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if is_llamagen_checkpoint(checkpoint):
        raise ValueError(
            f"{checkpoint} is a LlamaGen VQ checkpoint (the v2 tokenizer), not a taming VQGAN; read it "
            "with tokenizer.convert_llamagen.read_llamagen_checkpoint (or load_tokenizer)"
        )
    resolved = _resolve_config(checkpoint, config)
    return TamingCheckpoint(resolved, read_taming_state_dict(checkpoint, map_location=map_location))
