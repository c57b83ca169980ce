"""The bytes of one token shard: Arrow IPC (zstd) or Zarr v3 in a zip, encoded and decoded purely.

Split out of pipeline/store.py (which re-exports everything here) so the store module stays about its
manifest, reader and writer. Both encoders are deterministic: the same shard always gives the same
bytes (no timestamps), which is what lets a resumed tokenization run reproduce an uninterrupted one.

Shapes: n samples, V views (0 original, 1 horizontally flipped), h×w token grid.
"""

from __future__ import annotations

import io
import zipfile
from typing import NamedTuple

import numpy as np

STORE_FORMATS = ("zarr", "arrow")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip entry time: identical bytes on every run


class StoreError(ValueError):
    """Base class of every token-store error."""


class StoreFormatError(StoreError):
    """The store's format version (or layout) is not the one this code reads."""


class TokenShard(NamedTuple):
    """The samples of one shard, in input order."""

    tokens: np.ndarray  # (n, V, h, w) uint16; view 0 original, view 1 horizontally flipped
    labels: np.ndarray  # (n,) int64
    image_ids: np.ndarray  # (n,) str


def _check_shard(shard: TokenShard, num_views: int) -> None:
    tokens, labels, ids = shard
    if tokens.ndim != 4 or tokens.shape[1] != num_views or tokens.dtype != np.uint16:
        raise StoreFormatError(
            f"tokens must be uint16 (n, {num_views}, h, w), got {tokens.dtype} {tokens.shape}"
        )
    if not len(labels) == len(ids) == len(tokens):
        raise StoreFormatError(f"shard columns differ in length: {len(tokens)}, {len(labels)}, {len(ids)}")


def _encode_arrow(shard: TokenShard) -> bytes:
    import pyarrow as pa

    tokens, labels, ids = shard
    _, num_views, h, w = tokens.shape
    tensor_type = pa.fixed_shape_tensor(pa.uint16(), [h, w])
    columns = {}
    for view, name in enumerate(("tokens", "tokens_hflip")[:num_views]):
        flat = pa.array(np.ascontiguousarray(tokens[:, view]).reshape(-1), pa.uint16())
        storage = pa.FixedSizeListArray.from_arrays(flat, h * w)
        columns[name] = pa.ExtensionArray.from_storage(tensor_type, storage)
    columns["labels"] = pa.array(np.asarray(labels, np.int64), pa.int64())
    columns["image_ids"] = pa.array([str(i) for i in ids], pa.string())
    table = pa.table(columns)
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _primitive_values(array, dtype: type) -> np.ndarray:
    """A zero-copy numpy view of a null-free primitive Arrow array.

    Arrow's own `to_numpy` imports pandas on first use (0.15 s, paid again by every fresh
    DataLoader worker); the data buffer read directly needs nothing.
    """
    if array.null_count:
        raise StoreFormatError(f"unexpected nulls in a shard column of type {array.type}")
    if len(array) == 0:
        return np.zeros(0, dtype)
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * itemsize)


def _decode_arrow(data: bytes, num_views: int, grid: tuple[int, int]) -> TokenShard:
    import pyarrow as pa

    table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    n = table.num_rows
    views = []
    for name in ("tokens", "tokens_hflip")[:num_views]:
        column = table.column(name).combine_chunks()
        flat = column.storage.flatten() if isinstance(column, pa.ExtensionArray) else column.flatten()
        views.append(_primitive_values(flat, np.uint16).reshape(n, *grid))
    tokens = np.stack(views, axis=1) if n else np.zeros((0, num_views, *grid), np.uint16)
    labels = _primitive_values(table.column("labels").combine_chunks(), np.int64).copy()
    ids = np.asarray(table.column("image_ids").to_pylist(), dtype=str)
    return TokenShard(tokens.astype(np.uint16, copy=False), labels, ids)


def _encode_zarr(shard: TokenShard) -> bytes:
    import zarr
    from zarr.storage import MemoryStore

    tokens, labels, ids = shard
    n = len(tokens)
    entries: dict = {}
    group = zarr.open_group(MemoryStore(entries), mode="w", zarr_format=3)
    for view, name in enumerate(("tokens", "tokens_hflip")[: tokens.shape[1]]):
        array = group.create_array(
            name, shape=(n, *tokens.shape[2:]), chunks=(max(n, 1), *tokens.shape[2:]), dtype="uint16"
        )
        array[:] = tokens[:, view]
    group.create_array("labels", shape=(n,), chunks=(max(n, 1),), dtype="int64")[:] = np.asarray(labels)
    id_array = group.create_array("image_ids", shape=(n,), chunks=(max(n, 1),), dtype=str)
    if n:
        id_array[:] = np.asarray(ids, dtype=str)
    # zarr's ZipStore stamps each entry with the wall-clock time; we zip the same entries (same
    # layout, ZIP_STORED, readable by zarr.storage.ZipStore) with a fixed time so bytes are stable.
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(entries):
            archive.writestr(zipfile.ZipInfo(key, date_time=_ZIP_EPOCH), entries[key].to_bytes())
    return sink.getvalue()


def _decode_zarr(data: bytes, num_views: int, grid: tuple[int, int]) -> TokenShard:
    import zarr
    from zarr.core.buffer import cpu
    from zarr.storage import MemoryStore

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = {name: cpu.Buffer.from_bytes(archive.read(name)) for name in archive.namelist()}
    group = zarr.open_group(MemoryStore(entries, read_only=True), mode="r")
    views = [np.asarray(group[name][:], np.uint16) for name in ("tokens", "tokens_hflip")[:num_views]]
    tokens = np.stack(views, axis=1)
    if tokens.shape[2:] != tuple(grid):
        raise StoreFormatError(f"zarr shard grid {tokens.shape[2:]} != manifest grid {tuple(grid)}")
    labels = np.asarray(group["labels"][:], np.int64)
    ids = np.array(group["image_ids"][:].tolist(), dtype=str)  # numpy StringDType -> fixed str
    return TokenShard(tokens, labels, ids)


def encode_shard(shard: TokenShard, store_format: str) -> bytes:
    """Serialize one shard to the bytes of its single object (deterministic: same input, same bytes).

    Args:
        shard: tokens (n, V, h, w) uint16, labels (n,), image_ids (n,).
        store_format: "arrow" (Arrow IPC file, zstd) or "zarr" (Zarr v3 in a zip).
    """
    _check_shard(shard, shard.tokens.shape[1] if shard.tokens.ndim == 4 else 0)
    if store_format == "arrow":
        return _encode_arrow(shard)
    if store_format == "zarr":
        return _encode_zarr(shard)
    raise StoreFormatError(f"store_format must be one of {STORE_FORMATS}, got {store_format!r}")


def decode_shard_bytes(data: bytes, store_format: str, num_views: int, grid: tuple[int, int]) -> TokenShard:
    """Parse one shard object's bytes (pure, no I/O); `pipeline.store.decode_shard` takes a manifest.

    Returns:
        TokenShard with tokens (n, V, h, w) uint16, labels (n,) int64, image_ids (n,) str.
    """
    decode = {"arrow": _decode_arrow, "zarr": _decode_zarr}.get(store_format)
    if decode is None:
        raise StoreFormatError(f"store_format must be one of {STORE_FORMATS}, got {store_format!r}")
    try:
        return decode(data, num_views, tuple(grid))
    except StoreError:
        raise
    except Exception as error:  # a truncated/foreign object: name it instead of a deep library error
        raise StoreFormatError(f"cannot decode a {store_format} shard: {error}") from error
