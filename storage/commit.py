"""Write whole, then commit: the one protocol by which anything we store becomes visible.

Every format of ours that other processes read while it is being written (the token store, the
evaluation sample store, the weight folders) is made of *objects* and *records*:

1. objects are written whole: locally to a temporary name in the same folder, flushed and fsynced,
   then renamed (atomic on POSIX); on object storage in a single PUT, which the store makes visible
   only once complete. A reader never sees half an object under its final name.
2. a commit record is written after the objects it describes (a token shard's `_commits/*.json`, a
   sample shard's marker, a model folder's `config.json`), the same way. An earlier record at that
   name is removed *before* any of its objects is replaced, so a record never sits next to objects
   it does not describe.
3. a manifest, where the format has one (the token store's `manifest.json`), is a record written
   last, over every commit record.

So a crash at any point leaves either the previous complete state, or a state with a record missing
(unfinished: readers refuse it or redo the work), never a record over half-written objects; a rerun
writes the missing pieces and completes it. Leftover temporary files are named `.<name>.<token>.tmp`
and never match a reader's pattern. Temp + rename is written by hand because fsspec's local
`pipe_file` writes in place (a crash leaves a torn file under the final name).

`tests/test_commit_protocol.py` crashes each of the three users after every step of its sequence,
on the local disk and on a real S3 server, and checks what a reader then sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from storage.hedging import read_object, write_object

__all__ = [
    "is_local_filesystem",
    "put_whole",
    "read_json",
    "read_verified",
    "remove",
    "sha256_hex",
    "write_committed",
]


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest of `data` (what records store and `sha256sum` prints)."""
    return hashlib.sha256(data).hexdigest()


def is_local_filesystem(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is the local disk (where objects need temp + rename to appear whole)."""
    return isinstance(fs, LocalFileSystem)


# --- the two primitives every write goes through (the crash tests count them) ---------------------


def _write_object(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Make `path` hold `data`, appearing whole or not at all."""
    if not is_local_filesystem(fs):
        write_object(fs, path, data)  # one PUT (hedged): the object store shows it only once complete
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # atomic on POSIX
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _remove_object(fs: AbstractFileSystem, path: str) -> None:
    """Delete `path` if it exists (a missing object is not an error)."""
    if is_local_filesystem(fs):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)  # S3 answers a DELETE of a missing key with success
    fs.invalidate_cache(path)


def _record_present(fs: AbstractFileSystem, path: str) -> bool:
    """Whether a record is stored at `path`. On object storage a (hedged) GET: a DELETE cannot be
    hedged (storage/hedging.py), so a first write, which has no record to remove, sends none."""
    if is_local_filesystem(fs):
        return True  # removing a missing local file is free
    try:
        read_object(fs, path)
    except FileNotFoundError:
        return False
    return True


# --- the protocol -----------------------------------------------------------------------------------


def put_whole(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one object whole (temp + rename locally, one PUT on object storage).

    For objects that are their own record: a plan, a manifest without objects of its own, a log entry.
    """
    _write_object(fs, path, data)


def remove(fs: AbstractFileSystem, path: str) -> None:
    """Delete the object at `path` if there is one."""
    _remove_object(fs, path)


def write_committed(
    fs: AbstractFileSystem, objects: Mapping[str, bytes], record_path: str, record: bytes
) -> None:
    """Write `objects` whole, then the commit `record` that describes them, last.

    Args:
        fs: the filesystem (local or object storage).
        objects: path -> bytes of every object the record describes, written in this order.
        record_path: where the record goes (a commit record, a marker, a folder's config, a manifest).
        record: its bytes; written only after every object is in place.

    An earlier record at `record_path` is removed first, so between the first replaced object and the
    new record there is no record (unfinished), never an old record over new objects. An exception
    from any step leaves that state; calling again with the same arguments completes it.
    """
    if objects and _record_present(fs, record_path):
        _remove_object(fs, record_path)
    for path, data in objects.items():
        _write_object(fs, path, data)
    _write_object(fs, record_path, record)


def pin_plan(fs: AbstractFileSystem, path: str, plan: Mapping[str, Any]) -> dict[str, tuple[Any, Any]] | None:
    """Record a run's settings at `path` the first time; later, compare a run's settings with them.

    A resumable job (the token store, the evaluation sample store) pins its plan before its first
    object, so a rerun with other settings is refused instead of mixing two runs' objects.

    Returns:
        None when this call wrote the plan; otherwise {key: (stored, asked)} for every setting that
        differs from the stored plan (empty when they are the same).
    """
    normalized = json.loads(json.dumps(plan, sort_keys=True))  # tuples as lists, as they are stored
    existing = read_json(fs, path)
    if existing is None:
        put_whole(fs, path, json.dumps(normalized, indent=1, sort_keys=True).encode())
        return None
    keys = sorted(set(existing) | set(normalized))
    return {
        key: (existing.get(key), normalized.get(key))
        for key in keys
        if existing.get(key) != normalized.get(key)
    }


def read_json(fs: AbstractFileSystem, path: str) -> Any | None:
    """The JSON value stored at `path`, or None when there is no object there."""
    try:
        return json.loads(read_object(fs, path))
    except FileNotFoundError:
        return None


def read_verified(fs: AbstractFileSystem, path: str, *, sha256: str, size: int | None = None) -> bytes | None:
    """The bytes at `path` if they match a record's `sha256` (and `size`); None when missing or not."""
    try:
        data = read_object(fs, path, size=size)
    except FileNotFoundError:
        return None
    if (size is not None and len(data) != size) or sha256_hex(data) != sha256:
        return None
    return data
