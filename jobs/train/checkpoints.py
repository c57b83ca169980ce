"""Training checkpoints on local disk or object storage: complete-or-invisible, resumable on any world size.

Layout under the checkpoint URI (`s3://bucket/run/checkpoints` or a local path):

    step-00000100/            DeepSpeed's files for that step (every rank uploads the files it wrote)
    step-00000100/rank-00000.json   per-rank file list with sizes and sha256 (written after its uploads)
    step-00000100/meta.json   step, world size, ZeRO stage, loader state, EMA flag (rank 0, after a barrier)
    latest.json               {"step": 100, "path": "step-00000100"}, written last, in one PUT

A step directory without `latest.json` pointing at it is never used, so a job killed mid-save resumes
from the previous complete checkpoint. Loading verifies every file's size and sha256 before DeepSpeed
reads it (DeepSpeed's own files are torch pickles; we only load files whose checksums we recorded).
When the world size changed since the save, the checkpoint is converted to DeepSpeed's universal format
on each node (deepspeed.checkpoint.ds_to_universal) and loaded with `load_universal`, which reshards
ZeRO-1/2/3 optimizer state for the new world size (DeepSpeed#5405 is the pain this avoids).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from storage.filesystem import url_to_fs

logger = logging.getLogger(__name__)

LATEST = "latest.json"
META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupted; the message names the file."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What `meta.json` records next to DeepSpeed's files."""

    step: int
    world_size: int
    zero_stage: int
    loader_state: dict
    has_ema: bool
    model_config: dict
    extra: dict


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_dirname(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    """Reads and writes the checkpoints of one training run under `uri`.

    Args:
        uri: local directory or fsspec URL (e.g. `s3://bucket/run/checkpoints`).
        storage_options: fsspec options (credentials come from the standard AWS environment when absent).
    """

    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = uri.rstrip("/")
        self.fs, self.root = url_to_fs(self.uri, storage_options)  # with our S3 retry defaults

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # ----------------------------------------------------------------------------------------- reading
    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None when the run has none yet."""
        path = self._path(LATEST)
        if not self.fs.exists(path):
            return None
        try:
            record = json.loads(self.fs.cat_file(path))
            return int(record["step"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{self.uri}/{LATEST} is corrupted ({error})") from None

    def read_meta(self, step: int) -> CheckpointMeta:
        path = self._path(step_dirname(step), META)
        try:
            return CheckpointMeta(**json.loads(self.fs.cat_file(path)))
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {self.uri}/{step_dirname(step)} has no {META}") from None
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{self.uri}/{step_dirname(step)}/{META} is corrupted ({error})") from None

    def download(self, step: int, local_dir: Path) -> Path:
        """Copy a complete checkpoint to `local_dir/<step dir>`, verifying every recorded file."""
        name = step_dirname(step)
        remote = self._path(name)
        target = Path(local_dir) / name
        manifests = sorted(p for p in self.fs.ls(remote, detail=False) if Path(p).name.startswith("rank-"))
        if not manifests:
            raise CheckpointError(f"checkpoint {self.uri}/{name} lists no files (rank-*.json missing)")
        for manifest_path in manifests:
            try:
                files = json.loads(self.fs.cat_file(manifest_path))["files"]
            except (ValueError, KeyError) as error:
                raise CheckpointError(f"{manifest_path} is corrupted ({error})") from None
            for entry in files:
                local = target / entry["path"]
                if not (local.is_file() and local.stat().st_size == entry["bytes"]):
                    local.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        self.fs.get_file(self._path(name, entry["path"]), str(local))
                    except FileNotFoundError:
                        raise CheckpointError(
                            f"checkpoint file {self.uri}/{name}/{entry['path']} is missing"
                        ) from None
                if local.stat().st_size != entry["bytes"] or _sha256_file(local) != entry["sha256"]:
                    raise CheckpointError(
                        f"checkpoint file {self.uri}/{name}/{entry['path']} is corrupted (checksum mismatch)"
                    )
        meta = self.read_meta(step)
        (target / META).write_text(json.dumps(meta.__dict__))
        return target

    # ----------------------------------------------------------------------------------------- writing
    def upload_rank_files(self, step: int, local_step_dir: Path, rank: int) -> None:
        """Upload what this rank wrote under `local_step_dir`, then its file list (with checksums)."""
        name = step_dirname(step)
        entries = []
        for path in sorted(p for p in Path(local_step_dir).rglob("*") if p.is_file()):
            relative = path.relative_to(local_step_dir).as_posix()
            self.fs.makedirs(self._parent(self._path(name, relative)), exist_ok=True)
            self.fs.put_file(str(path), self._path(name, relative))
            entries.append({"path": relative, "bytes": path.stat().st_size, "sha256": _sha256_file(path)})
        self._write_atomic(self._path(name, f"rank-{rank:05d}.json"), json.dumps({"files": entries}))

    def commit(self, meta: CheckpointMeta) -> None:
        """Rank 0, after every rank uploaded: write meta.json, then point latest.json at the step."""
        name = step_dirname(meta.step)
        self._write_atomic(self._path(name, META), json.dumps(meta.__dict__, indent=1))
        self._write_atomic(self._path(LATEST), json.dumps({"step": meta.step, "path": name}))

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` complete checkpoints (and any incomplete older ones)."""
        latest = self.latest_step()
        if latest is None or keep < 1:
            return
        steps = sorted(
            int(Path(p).name.split("-")[1])
            for p in self.fs.ls(self.root, detail=False)
            if Path(p).name.startswith("step-")
        )
        complete = [s for s in steps if s <= latest]
        for step in complete[:-keep]:
            self.fs.rm(self._path(step_dirname(step)), recursive=True)

    def _parent(self, path: str) -> str:
        return path.rsplit("/", 1)[0]

    def _write_atomic(self, path: str, text: str) -> None:
        """One PUT on object stores; write-then-rename on a local filesystem."""
        if isinstance(self.fs, LocalFileSystem):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=Path(path).parent, delete=False) as f:
                f.write(text)
            os.replace(f.name, path)
        else:
            self.fs.pipe_file(path, text.encode())


def convert_to_universal(local_step_dir: Path, output_dir: Path) -> Path:
    """Convert a downloaded ZeRO checkpoint to DeepSpeed's universal format; returns the load directory.

    The result is laid out as DeepSpeed's loader expects: `output_dir/latest_universal` naming the tag
    directory `output_dir/universal`.
    """
    import sys

    from deepspeed.checkpoint import ds_to_universal

    output_dir = Path(output_dir)
    if (output_dir / "latest_universal").is_file():
        return output_dir
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        "ds_to_universal",
        "--input_folder",
        str(local_step_dir),
        "--output_folder",
        str(staging / "universal"),
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
        "--inject_missing_state",
    ]
    saved_argv, sys.argv = sys.argv, argv
    try:
        ds_to_universal.main(ds_to_universal.parse_arguments())
    finally:
        sys.argv = saved_argv
    (staging / "latest_universal").write_text("universal")
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    return output_dir
