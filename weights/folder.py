"""Our weight format: a folder with `config.json` and `model.safetensors`, local or at any fsspec URL.

One folder format for every model we save (the Hugging Face habit; docs/architecture.md, "Weights")::

    config.json          {"format": "maskgit-vqgan" | "maskgit-transformer", "version": 2,
                          "config": the model config, "weights_sha256": sha256 of model.safetensors,
                          ...format-specific entries (sampling defaults, class names)}
    model.safetensors    the state dict (no pickles), byte-identical for identical weights

Version 1 folders had no `weights_sha256`, and the transformer's kept its config under "model";
`read_folder_config` still reads them and hands back the version 2 layout.

Writes follow the one commit protocol of `storage.commit`, with `config.json` as the commit record:
a reader never sees a `config.json` next to weights it does not describe. An old `config.json` is
deleted first, the weights are written whole (temp + rename locally, one PUT on object storage), and
`config.json` is written last, so a folder is only valid once it is complete. Paths are local paths
or fsspec URLs (`s3://bucket/models/vqgan`) opened through `storage.filesystem` (our object-store
retries), with `storage_options` passed on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes

from storage.commit import write_committed
from storage.filesystem import is_local, url_to_fs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FOLDER_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The safetensors header's metadata: the Hugging Face tag for torch tensors. Exactly one entry, since
# safetensors writes a metadata map of several entries in hash order, which would make the bytes (and
# the digest) of identical weights differ between saves.
_SAFETENSORS_METADATA = {"format": "pt"}
_RESERVED_KEYS = {"format", "version", "config", "weights_sha256"}

PathOrURL = str | os.PathLike


def _filesystem(path: PathOrURL, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of `path` and the path inside it (no trailing slash)."""
    fs, root = url_to_fs(path, dict(storage_options or {}))
    return fs, root.rstrip("/") or root


def _join(root: str, name: str) -> str:
    return f"{root}/{name}"


def _as_returned(path: PathOrURL) -> Path | str:
    return Path(path) if is_local(path) and "://" not in os.fspath(path) else os.fspath(path)


def serialize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """`state_dict` as safetensors bytes (CPU, contiguous), identical for identical tensors.

    Raises:
        ValueError: a value is not a tensor, or tensors share memory (tied weights), which
            safetensors refuses; the message names the offending keys.
    """
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"state dict entries that are not tensors: {not_tensors[:10]}")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    try:
        return save_safetensors_bytes(tensors, metadata=dict(_SAFETENSORS_METADATA))
    except (RuntimeError, ValueError, SafetensorError) as error:
        raise ValueError(f"cannot serialise the state dict as safetensors: {error}") from error


def save_folder(
    path: PathOrURL,
    *,
    format_name: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    extra: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | str:
    """Write `path/config.json` and `path/model.safetensors` atomically (see the module docstring).

    Args:
        path: the folder, a local path or an fsspec URL; created if needed, overwritten if it holds a
            model already.
        format_name: the format tag readers check ("maskgit-vqgan").
        config: the model config as JSON-able values (`SomeConfig.to_dict()`).
        state_dict: the (unwrapped) model's tensors; copied to the CPU.
        extra: further JSON-able entries of `config.json` (e.g. "sampling"); may not reuse the keys
            format, version, config or weights_sha256.
        storage_options: fsspec options for a URL.

    Returns:
        the folder: a `Path` for a local path, the URL string otherwise.

    Raises:
        ValueError: the state dict cannot be serialised, or `extra` reuses a reserved key. Nothing
            under the final names has been written or removed then.
    """
    clashing = sorted(_RESERVED_KEYS & set(extra or {}))
    if clashing:
        raise ValueError(f"extra config.json entries {clashing} clash with the folder's own keys")
    data = serialize_state_dict(state_dict)
    record = {
        "format": format_name,
        "version": FOLDER_VERSION,
        "config": dict(config),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        **dict(extra or {}),
    }
    text = (json.dumps(record, indent=2) + "\n").encode()
    fs, root = _filesystem(path, storage_options)
    fs.makedirs(root, exist_ok=True)  # on object storage: creates a missing bucket
    # The old config goes first: until the new one is written the folder has no config.json
    # (invalid), never an old config next to new weights.
    write_committed(fs, {_join(root, WEIGHTS_FILE): data}, _join(root, CONFIG_FILE), text)
    return _as_returned(path)


def exists(path: PathOrURL, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether anything (a file or a folder) is at `path`, local or at a URL."""
    fs, root = _filesystem(path, storage_options)
    return bool(fs.exists(root))


def is_model_folder(path: PathOrURL, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether `path` is a folder holding a `config.json` (one of ours, or at least claiming to be)."""
    fs, root = _filesystem(path, storage_options)
    try:
        return fs.isfile(_join(root, CONFIG_FILE))
    except (FileNotFoundError, NotADirectoryError):
        return False


def read_folder_config(
    path: PathOrURL,
    format_name: str,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole `config.json` record of one of our folders, in the version 2 layout.

    Args:
        path: the folder (local path or fsspec URL).
        format_name: the format tag it must carry.
        storage_options: fsspec options for a URL.

    Returns:
        the record: "format", "version", "config" (a dict), "weights_sha256" (None for version 1
        folders) and the format's own entries. A version 1 record's "model" entry is returned as
        "config".

    Raises:
        FileNotFoundError: no `config.json` in `path`.
        ValueError: not JSON, another format, an unsupported version, or no config dict.
    """
    fs, root = _filesystem(path, storage_options)
    location = f"{os.fspath(path)}/{CONFIG_FILE}"
    try:
        raw = fs.cat_file(_join(root, CONFIG_FILE))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"no {CONFIG_FILE} in {os.fspath(path)}") from None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{location} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or record.get("format") != format_name:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{location} is not a {format_name} config (format tag {found!r})")
    version = record.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{location} has format version {version!r}; this code reads versions {list(READABLE_VERSIONS)}"
        )
    if version == 1 and "config" not in record and "model" in record:
        record["config"] = record.pop("model")
    if not isinstance(record.get("config"), dict):
        raise ValueError(f"{location} has no 'config' object")
    record.setdefault("weights_sha256", None)
    return record


def load_folder_weights(
    path: PathOrURL,
    map_location: str | torch.device = "cpu",
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of `path/model.safetensors` (memory-mapped locally, read whole from a URL).

    Raises:
        FileNotFoundError: no `model.safetensors` in `path`.
        ValueError: the file is corrupt or truncated; the message names it.
    """
    fs, root = _filesystem(path, storage_options)
    location = f"{os.fspath(path)}/{WEIGHTS_FILE}"
    try:
        if isinstance(fs, LocalFileSystem):
            if not os.path.isfile(_join(root, WEIGHTS_FILE)):
                raise FileNotFoundError
            return load_file(_join(root, WEIGHTS_FILE), device=str(map_location))
        data = fs.cat_file(_join(root, WEIGHTS_FILE))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {os.fspath(path)}") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read {location} (corrupt or truncated?): {error}") from None
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as error:
        raise ValueError(f"cannot read {location} (corrupt or truncated?): {error}") from None
    return {key: value.to(map_location) for key, value in tensors.items()}


def weights_digest(path: PathOrURL, storage_options: Mapping[str, Any] | None = None) -> str:
    """sha256 hex digest of the weights: what a token store records as the tokenizer's identity.

    For one of our folders, the digest of `model.safetensors` (what `sha256sum` prints), read from
    `config.json` where `save_folder` recorded it, else computed; for any other file (a foreign
    checkpoint), the digest of that file.

    Raises:
        FileNotFoundError: no folder with weights and no file at `path`.
    """
    fs, root = _filesystem(path, storage_options)
    if fs.isdir(root):
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
            recorded = json.loads(fs.cat_file(_join(root, CONFIG_FILE))).get("weights_sha256")
            if isinstance(recorded, str) and recorded:
                return recorded
        root = _join(root, WEIGHTS_FILE)
    if not fs.isfile(root):
        raise FileNotFoundError(f"no weights file at {os.fspath(path)}")
    digest = hashlib.sha256()
    with fs.open(root, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def local_copy(path: PathOrURL, storage_options: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """A local path to the file at `path`: `path` itself on the local disk, else a temporary download.

    For readers of foreign checkpoints that need a real file (memory-mapped `torch.load`).
    """
    if is_local(path):
        _, root = _filesystem(path, storage_options)
        yield Path(root)
        return
    fs, root = _filesystem(path, storage_options)
    if not fs.isfile(root):
        raise FileNotFoundError(f"no file at {os.fspath(path)}")
    with tempfile.TemporaryDirectory(prefix="maskgit-weights-") as folder:
        local = Path(folder) / Path(root).name
        fs.get_file(root, str(local))
        yield local
