"""Image sources for tokenization: an ImageNet-style folder tree, WebDataset tar shards, or Parquet.

Any fsspec URL works (local path or `s3://`). `plan_sources` lists the input once, sorted, and cuts it
into `ShardTask`s, a pure function of the listing and the shard size, so a rerun after a crash recomputes
the very same plan and the store can skip what is already committed:

- folder `root/<class>/**/<file>`: shard k = files [k·S, (k+1)·S) of the sorted listing; the class index
  comes from sorted folder names or a class map. Every regular file counts (a README in a class folder
  becomes a reject, not a silent skip); dot-files are ignored, as torchvision's ImageFolder does.
- WebDataset: shard k = the k-th tar (sorted); samples are grouped by key with webdataset's own
  `tar_file_iterator` / `group_by_keys`, label from `cls` / `class` / `label`.
- Parquet: shard k = a range of at most S rows of one file; image bytes from a binary column or a
  Hugging Face `{"bytes", "path"}` struct, label from an integer (or class-mapped string) column.

`prepare_shard` then reads a task's bytes, decodes them with `pipeline.images.decode_image` and applies
the reference's evaluation transform (short side resize + center crop). Inputs that cannot become
RGB images are returned as rejects with their reason; nothing is dropped silently. A task that finds
none of the inputs it lists is no bad data but an input this process cannot see (a folder on the
driver's disk read on another node): it raises `InputNotVisibleError` instead of rejecting them all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
import numpy as np

from pipeline.images import ImageRejected, center_crop_resize, decode_image
from storage.filesystem import open_file, url_to_fs

INPUT_FORMATS = ("folder", "webdataset", "parquet")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")  # webdataset keys
LABEL_SUFFIXES = ("cls", "class", "label", "cls.txt", "class.txt", "label.txt")
IMAGE_COLUMNS = ("image", "image_bytes", "jpg", "png", "img", "bytes")
LABEL_COLUMNS = ("label", "labels", "cls", "class", "target")
ID_COLUMNS = ("image_id", "id", "key", "__key__", "filename", "path")


@dataclass(frozen=True)
class ShardTask:
    """The inputs of one output shard; JSON-serialisable (`to_json`) so it can travel in a Ray row.

    Attributes:
        index: output shard index.
        input_format: "folder", "webdataset" or "parquet".
        root: the folder root, tar URL or Parquet file URL.
        members: folder only: image paths relative to `root`.
        labels: folder only: one class index per member.
        row_start, row_stop: parquet only: the row range [start, stop) of `root`.
    """

    index: int
    input_format: str
    root: str
    members: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    row_start: int = 0
    row_stop: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardTask:
        data = json.loads(text)
        return cls(**{**data, "members": tuple(data["members"]), "labels": tuple(data["labels"])})


class SourcePlan(NamedTuple):
    """What `plan_sources` found: the shard tasks and what identifies the input."""

    input_format: str
    sources: tuple[str, ...]  # the input URLs, expanded
    class_names: tuple[str, ...]  # empty when only the data can tell (tar / Parquet without a map)
    tasks: list[ShardTask]
    num_inputs: int  # files (folder), tars (webdataset) or rows (parquet)
    listing_sha256: str  # digest of the sorted listing with sizes: a changed input is detected


class PreparedShard(NamedTuple):
    """A shard's images after decode + resize, and what was rejected."""

    images: np.ndarray  # (n, R, R, 3) uint8
    labels: np.ndarray  # (n,) int64
    image_ids: np.ndarray  # (n,) str
    rejects: list[dict[str, str]]  # {"source", "image_id", "reason", "detail"}


class InputNotVisibleError(FileNotFoundError):
    """None of the inputs a shard task lists exists where the task reads them.

    The planner listed them a moment before, so this is not a bad image: the input is not visible
    from this process at all (a path on the driver's disk read on a node that shares no filesystem with
    it, or an input deleted since it was listed). `prepare_shard` raises it instead of turning every
    file into a reject; a single missing file among found ones is still a `missing` reject.
    """

    def __init__(self, root: str, listed: int, detail: str = "", where: str = ""):
        self.root, self.listed, self.detail, self.where = root, listed, detail, where  # where: "node ..."
        place = f"on {where}" if where else "here"
        super().__init__(f"none of the {listed} inputs listed under {root} exists {place} ({detail})")

    def __reduce__(self):  # pickled across processes (Ray) with its fields
        return type(self), (self.root, self.listed, self.detail, self.where)


class RawRecord(NamedTuple):
    """One input's encoded bytes (or the reason it has none) before decoding."""

    image_id: str
    source: str
    data: bytes | None
    label: int
    error: ImageRejected | None = None


# --- class maps -----------------------------------------------------------------------------------


def load_class_map(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """Read a class map: a JSON list of names, a JSON object {name: index}, or a text file, one name a line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: indices that are not 0..K-1 exactly once.
    """
    with open_file(path, "rt", storage_options) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [line.strip() for line in text.splitlines() if line.strip()]
    mapping = {str(n): i for i, n in enumerate(data)} if isinstance(data, list) else dict(data)
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"class map {path}: indices must be 0..{len(mapping) - 1}, each exactly once")
    return {str(name): int(index) for name, index in mapping.items()}


def class_names_of(mapping: dict[str, int]) -> tuple[str, ...]:
    return tuple(name for name, _ in sorted(mapping.items(), key=lambda item: item[1]))


# --- listing and planning -------------------------------------------------------------------------


def _expand(uri: str, fs: fsspec.AbstractFileSystem) -> list[str]:
    """Expand `uri` (`::`-separated list, brace patterns as webdataset does, globs) to fsspec paths."""
    from webdataset.shardlists import expand_urls

    paths: list[str] = []
    for one in expand_urls(uri):
        stripped = fs._strip_protocol(one)
        paths.extend(sorted(fs.glob(stripped)) if any(c in stripped for c in "*?[") else [stripped])
    return paths


def detect_input_format(paths: list[str], fs: fsspec.AbstractFileSystem) -> str:
    """'webdataset' for .tar files (or a folder of them), 'parquet' likewise, else 'folder'."""
    names = paths
    if len(paths) == 1 and fs.isdir(paths[0]):
        names = fs.ls(paths[0], detail=False)
    kinds = {
        "webdataset" if n.endswith(".tar") else "parquet" if n.endswith(".parquet") else None for n in names
    }
    if len(paths) == 1 and fs.isdir(paths[0]):
        kinds.discard(None)
        return kinds.pop() if len(kinds) == 1 else "folder"
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"cannot tell the input format of {paths[:3]}...; pass --input-format")
    return kinds.pop()


def _files_of(paths: list[str], fs: fsspec.AbstractFileSystem, suffix: str) -> list[str]:
    if len(paths) == 1 and fs.isdir(paths[0]):
        return sorted(p for p in fs.ls(paths[0], detail=False) if p.endswith(suffix))
    return paths


def _digest(rows: list[Any]) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _plan_folder(root, fs, shard_size, class_map) -> tuple[tuple[str, ...], list[ShardTask], int, str]:
    found = fs.find(root, withdirs=False, detail=True)
    entries = []
    for path, info in found.items():
        relative = path[len(root.rstrip("/")) + 1 :]
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        entries.append((relative, int(info.get("size") or 0)))
    entries.sort()
    classes = sorted({rel.split("/")[0] for rel, _ in entries if "/" in rel})
    mapping = class_map if class_map is not None else {name: i for i, name in enumerate(classes)}
    unknown = [c for c in classes if c not in mapping]
    if unknown:
        raise ValueError(f"class folders {unknown[:5]} under {root} are not in the class map")
    # A file directly under the root has no class: label -1 marks it, and prepare_shard rejects it.
    labels = [mapping[rel.split("/")[0]] if "/" in rel else -1 for rel, _ in entries]
    root_url = fs.unstrip_protocol(root)
    tasks = [
        ShardTask(
            index=k,
            input_format="folder",
            root=root_url,
            members=tuple(rel for rel, _ in entries[start : start + shard_size]),
            labels=tuple(labels[start : start + shard_size]),
        )
        for k, start in enumerate(range(0, len(entries), shard_size))
    ]
    return class_names_of(mapping), tasks, len(entries), _digest([entries, labels])


def plan_sources(
    uri: str,
    *,
    input_format: str | None = None,
    shard_size: int = 256,
    class_map: dict[str, int] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> SourcePlan:
    """List the input at `uri` (sorted) and cut it into shard tasks.

    Args:
        uri: a folder tree root, a folder of .tar / .parquet files, one file, a glob, a brace
            pattern (`s3://b/train-{000000..000099}.tar`) or a `::`-separated list of these.
        input_format: "folder", "webdataset" or "parquet"; detected from `uri` when None.
        shard_size: images per output shard (folder) or rows per shard (parquet); a tar is one shard.
        class_map: {class name: index}; default sorted folder names (folder), or none.

    Raises:
        FileNotFoundError: `uri` matches nothing.
        ValueError: unknown format, a class folder missing from the map, an empty input.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    fs, _ = url_to_fs(uri, storage_options)
    paths = [p for p in _expand(uri, fs) if fs.exists(p)]
    if not paths:
        raise FileNotFoundError(f"input {uri} does not exist or matches nothing")
    input_format = input_format or detect_input_format(paths, fs)
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    class_names = class_names_of(class_map) if class_map else ()
    if input_format == "folder":
        if len(paths) != 1 or not fs.isdir(paths[0]):
            raise ValueError(f"a folder-tree input must be one directory, got {uri}")
        class_names, tasks, count, digest = _plan_folder(paths[0].rstrip("/"), fs, shard_size, class_map)
    elif input_format == "webdataset":
        tars = _files_of(paths, fs, ".tar")
        sizes = [int(fs.size(t)) for t in tars]
        tasks = [ShardTask(k, "webdataset", fs.unstrip_protocol(t)) for k, t in enumerate(tars)]
        count, digest = len(tars), _digest([list(zip(tars, sizes))])
    else:
        import pyarrow.parquet as pq

        tasks, listing = [], []
        for path in _files_of(paths, fs, ".parquet"):
            with fs.open(path, "rb") as handle:
                rows = pq.ParquetFile(handle).metadata.num_rows
            listing.append((path, int(fs.size(path)), rows))
            for start in range(0, rows, shard_size):
                stop = min(rows, start + shard_size)
                tasks.append(ShardTask(len(tasks), "parquet", fs.unstrip_protocol(path), (), (), start, stop))
        count, digest = sum(rows for *_, rows in listing), _digest(listing)
    if count == 0:
        raise ValueError(f"input {uri} holds no files")
    return SourcePlan(
        input_format, tuple(fs.unstrip_protocol(p) for p in paths), class_names, tasks, count, digest
    )


# --- reading one task -----------------------------------------------------------------------------


def _label_of(value: Any, class_map: dict[str, int] | None) -> int:
    if isinstance(value, bytes):
        value = value.decode().strip()
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if class_map is None or value not in class_map:
            raise ValueError(f"label {value!r} is not an integer and not in the class map")
        return class_map[value]
    return int(value)


def _folder_records(task: ShardTask, storage_options) -> Iterator[RawRecord]:
    fs, root = url_to_fs(task.root, storage_options)
    paths = [f"{root.rstrip('/')}/{member}" for member in task.members]
    contents = fs.cat(paths, on_error="return") if paths else {}
    missing = [p for p in paths if isinstance(contents.get(p), FileNotFoundError) or p not in contents]
    if paths and len(missing) == len(paths):
        raise InputNotVisibleError(task.root, len(paths), f"first: {missing[0]}")
    for member, path, label in zip(task.members, paths, task.labels):
        data = contents.get(path)
        source = f"{task.root.rstrip('/')}/{member}"
        if label < 0:
            yield RawRecord(member, source, None, label, ImageRejected("no_class_folder", "file at the root"))
        elif path in missing:  # gone since it was listed; the others are here
            yield RawRecord(member, source, None, label, ImageRejected("missing", repr(data)))
        elif isinstance(data, BaseException) or data is None:
            yield RawRecord(member, source, None, label, ImageRejected("unreadable", repr(data)))
        else:
            yield RawRecord(member, source, data, label)


def _tar_sample_record(sample: dict[str, Any], name: str, url: str, class_map) -> RawRecord:
    image_id, source = f"{name}/{sample['__key__']}", f"{url}#{sample['__key__']}"
    image_key = next((s for s in IMAGE_SUFFIXES if s in sample), None)
    label_key = next((s for s in LABEL_SUFFIXES if s in sample), None)
    if image_key is None:
        kinds = sorted(k for k in sample if not k.startswith("__"))
        return RawRecord(image_id, source, None, -1, ImageRejected("no_image_in_sample", str(kinds)))
    if label_key is None:
        return RawRecord(image_id, source, None, -1, ImageRejected("no_label", "no cls/label entry"))
    try:
        return RawRecord(image_id, source, sample[image_key], _label_of(sample[label_key], class_map))
    except ValueError as error:
        return RawRecord(image_id, source, None, -1, ImageRejected("bad_label", str(error)))


def _tar_has_end_marker(url: str, storage_options) -> bool:
    """Whether the tar ends in zero blocks: tarfile's stream reader stops quietly at a truncation that
    falls on a member boundary, so the end-of-archive marker is what tells a whole tar from a cut one."""
    fs, path = url_to_fs(url, storage_options)
    size = fs.size(path)
    return size >= 1024 and not any(fs.cat_file(path, start=size - 1024, end=size))


def _tar_records(task: ShardTask, storage_options, class_map) -> Iterator[RawRecord]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    name = os.path.basename(task.root)
    with open_file(task.root, "rb", storage_options) as handle:
        files = ({**f, "__url__": task.root} for f in tar_file_iterator(handle))
        try:
            for sample in group_by_keys(files):
                yield _tar_sample_record(sample, name, task.root, class_map)
        except Exception as error:  # a truncated or corrupt tar: keep what was read, reject the rest
            yield RawRecord(f"{name}/*", task.root, None, -1, ImageRejected("corrupt_tar", str(error)))
            return
    if not _tar_has_end_marker(task.root, storage_options):
        detail = "no end-of-archive marker: the tar is truncated; samples after the cut are lost"
        yield RawRecord(f"{name}/*", task.root, None, -1, ImageRejected("corrupt_tar", detail))


def _pick(names: list[str], candidates: tuple[str, ...], what: str, source: str) -> str | None:
    found = next((c for c in candidates if c in names), None)
    if found is None and what:
        raise ValueError(f"{source} has no {what} column (looked for {list(candidates)}; columns {names})")
    return found


def _parquet_records(task: ShardTask, storage_options, class_map) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    name = os.path.basename(task.root)
    with open_file(task.root, "rb", storage_options) as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        image_col = _pick(names, IMAGE_COLUMNS, "image", task.root)
        label_col = _pick(names, LABEL_COLUMNS, "label", task.root)
        id_col = _pick(names, ID_COLUMNS, "", task.root)
        groups, offset = [], 0
        for g in range(parquet.num_row_groups):  # only the row groups overlapping [row_start, row_stop)
            rows = parquet.metadata.row_group(g).num_rows
            if offset < task.row_stop and offset + rows > task.row_start:
                groups.append((g, offset))
            offset += rows
        columns = [c for c in (image_col, label_col, id_col) if c]
        table = parquet.read_row_groups([g for g, _ in groups], columns=columns) if groups else None
    if table is None:
        return
    first = groups[0][1]
    table = table.slice(task.row_start - first, task.row_stop - task.row_start)
    images, labels = table.column(image_col).to_pylist(), table.column(label_col).to_pylist()
    ids = table.column(id_col).to_pylist() if id_col else [None] * len(images)
    for row, (image, label, image_id) in enumerate(zip(images, labels, ids), start=task.row_start):
        image_id = str(image_id) if image_id is not None else f"{name}#{row}"
        source = f"{task.root}#{row}"
        data = image.get("bytes") if isinstance(image, dict) else image
        try:
            label = _label_of(label, class_map)
        except (TypeError, ValueError) as error:
            yield RawRecord(image_id, source, None, -1, ImageRejected("bad_label", str(error)))
            continue
        yield RawRecord(image_id, source, data, label, None if data else ImageRejected("empty_file"))


def iter_task_records(
    task: ShardTask, storage_options: dict[str, Any] | None = None, class_map: dict[str, int] | None = None
) -> Iterator[RawRecord]:
    """The encoded inputs of one shard task, in plan order (no decoding yet)."""
    if task.input_format == "folder":
        return _folder_records(task, storage_options)
    if task.input_format == "webdataset":
        return _tar_records(task, storage_options, class_map)
    return _parquet_records(task, storage_options, class_map)


def _records_seen_here(task: ShardTask, storage_options, class_map) -> Iterator[RawRecord]:
    """`iter_task_records`, with a tar or Parquet file the planner listed but this process cannot find
    raised as `InputNotVisibleError` (a folder task raises it itself when it finds none of its files)."""
    try:
        yield from iter_task_records(task, storage_options, class_map)
    except InputNotVisibleError:
        raise
    except FileNotFoundError as error:
        raise InputNotVisibleError(task.root, 1, str(error)) from None


def prepare_shard(
    task: ShardTask,
    resolution: int,
    *,
    storage_options: dict[str, Any] | None = None,
    class_map: dict[str, int] | None = None,
) -> PreparedShard:
    """Read, decode and resize (short side + center crop) the images of one task; collect rejects.

    Returns:
        PreparedShard with images (n, resolution, resolution, 3) uint8 in plan order.

    Raises:
        InputNotVisibleError: none of the task's listed inputs exists here (not a reject: the input
            is not visible from this process, e.g. a path only the driver's node has).
    """
    images, labels, ids, rejects = [], [], [], []
    for record in _records_seen_here(task, storage_options, class_map):
        error = record.error
        if error is None:
            try:
                image = center_crop_resize(decode_image(record.data), resolution)
            except ImageRejected as rejected:
                error = rejected
        if error is not None:
            rejects.append(
                {
                    "source": record.source,
                    "image_id": record.image_id,
                    "reason": error.reason,
                    "detail": error.detail[:300],
                }
            )
            continue
        images.append(image)
        labels.append(record.label)
        ids.append(record.image_id)
    stacked = np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)
    return PreparedShard(stacked, np.asarray(labels, np.int64), np.asarray(ids, dtype=str), rejects)
