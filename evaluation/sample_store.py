"""The evaluation sample store: generated images and their features as shards with commit markers.

`maskgit evaluate` samples N images in shards over many workers and may be killed at any point; a
rerun must redo only what was not finished and never sample a finished shard again. Layout at
`<root>` (any fsspec filesystem; the caller passes the filesystem object):

    <root>/plan.json                                   the run's settings; reruns must match them
    <root>/samples/shard-000042.npz                    images (n, H, W, 3) uint8, class_ids, seeds, indices
    <root>/samples/shard-000042.json                   commit marker (count, sha256, run, attempt)
    <root>/features/<evaluator>/evaluator.json         which evaluator made the features
    <root>/features/<evaluator>/shard-000042.npz       features (n, D) float32, logits (n, C) float32
    <root>/features/<evaluator>/shard-000042.json      commit marker
    <root>/attempts/shard-000042-<run>-<attempt>.json  one record per time a worker starts sampling a shard

An object is written whole, then its marker (the one commit protocol of `storage.commit`: temp +
rename locally, one PUT on object storage, the marker last); a shard without a marker is unfinished
and is redone.
Sample i (global index in the class-major plan) always uses seed `seed + i`, so a redone shard
reproduces the same images.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Any, NamedTuple

import numpy as np

from storage.commit import pin_plan, put_whole, read_verified, sha256_hex, write_committed

PLAN_NAME = "plan.json"


class PlanMismatchError(ValueError):
    """The output already holds a run begun with other settings."""


@dataclasses.dataclass(frozen=True)
class SampleShardPlan:
    """Which samples one shard holds: global indices [start, stop) of the class-major sample list."""

    index: int
    start: int
    stop: int


def plan_sample_shards(num_samples: int, shard_size: int) -> list[SampleShardPlan]:
    """Cut `num_samples` into consecutive shards of at most `shard_size`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [
        SampleShardPlan(k, start, min(num_samples, start + shard_size))
        for k, start in enumerate(range(0, num_samples, shard_size))
    ]


def class_major_labels(classes: list[int], per_class: int) -> np.ndarray:
    """(len(classes) * per_class,) class ids: all of the first class, then the next (reference order)."""
    return np.repeat(np.asarray(classes, np.int64), per_class)


class SampleShard(NamedTuple):
    """The generated images of one shard."""

    images: np.ndarray  # (n, H, W, 3) uint8
    class_ids: np.ndarray  # (n,) int64
    seeds: np.ndarray  # (n,) int64
    indices: np.ndarray  # (n,) int64, global sample indices


class FeatureShard(NamedTuple):
    """Evaluator outputs for one shard of samples."""

    features: np.ndarray  # (n, D) float32
    logits: np.ndarray  # (n, C) float32


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _is_record(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".json") and not name.startswith(".")


class SampleStore:
    """Reader/writer of the layout above.

    Args:
        fs: an fsspec filesystem (local or S3).
        root: path of the store inside `fs` (no protocol).
    """

    def __init__(self, fs, root: str):
        self.fs = fs
        self.root = root.rstrip("/")

    # --- plan ---------------------------------------------------------------------------------

    def ensure_plan(self, plan: dict[str, Any]) -> bool:
        """Record the run's settings, or check them against the stored ones.

        Returns:
            True when the store already had this plan (a resumed or repeated run).

        Raises:
            PlanMismatchError: naming each setting that differs.
        """
        differences = pin_plan(self.fs, f"{self.root}/{PLAN_NAME}", plan)
        if differences:
            diffs = [f"{key}: stored {old!r}, this run {new!r}" for key, (old, new) in differences.items()]
            raise PlanMismatchError(
                f"{self.root} holds an evaluation begun with other settings ({'; '.join(diffs)}); "
                "use another output, or delete it to start over"
            )
        return differences is not None

    # --- samples ------------------------------------------------------------------------------

    def _sample_path(self, index: int, suffix: str) -> str:
        return f"{self.root}/samples/shard-{index:06d}.{suffix}"

    def _feature_path(self, evaluator_key: str, index: int, suffix: str) -> str:
        return f"{self.root}/features/{evaluator_key}/shard-{index:06d}.{suffix}"

    def refresh(self) -> None:
        """Forget cached listings (object-store filesystems cache them; workers write behind our back)."""
        self.fs.invalidate_cache()

    def _committed(self, directory: str) -> set[int]:
        self.refresh()
        if not self.fs.exists(directory):
            return set()
        names = [path.rsplit("/", 1)[-1] for path in self.fs.ls(directory, detail=False)]
        return {int(name[6:12]) for name in names if name.startswith("shard-") and name.endswith(".json")}

    def committed_samples(self) -> set[int]:
        """Indices of sample shards with a commit marker."""
        return self._committed(f"{self.root}/samples")

    def committed_features(self, evaluator_key: str) -> set[int]:
        """Indices of shards whose features under `evaluator_key` are committed."""
        return self._committed(f"{self.root}/features/{evaluator_key}")

    def record_attempt(self, index: int, run_id: str, attempt_id: str, **details: Any) -> None:
        """Log that a worker starts sampling shard `index` (never overwritten: one file per attempt)."""
        record = {"shard": index, "run": run_id, "attempt": attempt_id, "started": time.time(), **details}
        path = f"{self.root}/attempts/shard-{index:06d}-{run_id}-{attempt_id}.json"
        self.fs.makedirs(f"{self.root}/attempts", exist_ok=True)
        put_whole(self.fs, path, json.dumps(record).encode())

    def attempts(self) -> list[dict[str, Any]]:
        """Every attempt record, in no particular order."""
        directory = f"{self.root}/attempts"
        if not self.fs.exists(directory):
            return []
        paths = self.fs.ls(directory, detail=False)
        # Only records: a crash during a local write can leave a `.<name>.<token>.tmp` file behind.
        return [json.loads(self.fs.cat(path)) for path in paths if _is_record(path)]

    def _write(self, data_path: str, marker_path: str, data: bytes, count: int, **details: Any) -> None:
        self.fs.makedirs(data_path.rsplit("/", 1)[0], exist_ok=True)
        marker = {"count": count, "sha256": sha256_hex(data), "bytes": len(data), **details}
        # The marker last: the shard exists from then on.
        write_committed(self.fs, {data_path: data}, marker_path, json.dumps(marker).encode())

    def _read(self, data_path: str, marker_path: str) -> dict[str, np.ndarray]:
        marker = json.loads(self.fs.cat(marker_path))
        data = read_verified(self.fs, data_path, sha256=marker["sha256"])
        if data is None:
            raise ValueError(
                f"{data_path} is missing or does not match its commit marker; delete both to redo it"
            )
        return _load_npz(data)

    def write_samples(self, index: int, shard: SampleShard, **details: Any) -> None:
        """Write shard `index`'s images, then its commit marker."""
        data = _npz_bytes(**shard._asdict())
        self._write(
            self._sample_path(index, "npz"),
            self._sample_path(index, "json"),
            data,
            len(shard.seeds),
            **details,
        )

    def read_samples(self, index: int) -> SampleShard:
        """Shard `index`'s images (checksum verified)."""
        arrays = self._read(self._sample_path(index, "npz"), self._sample_path(index, "json"))
        return SampleShard(**{field: arrays[field] for field in SampleShard._fields})

    def sample_commit(self, index: int) -> dict[str, Any]:
        """The commit marker of sample shard `index`."""
        return json.loads(self.fs.cat(self._sample_path(index, "json")))

    # --- features -----------------------------------------------------------------------------

    def ensure_evaluator(self, evaluator_key: str, info: dict[str, Any]) -> None:
        """Pin the evaluator that makes the features under `evaluator_key`.

        Raises:
            PlanMismatchError: features there were made by a differently set-up evaluator.
        """
        path = f"{self.root}/features/{evaluator_key}/evaluator.json"
        normalized = json.loads(json.dumps(info, sort_keys=True))
        if not self.fs.exists(path):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            put_whole(self.fs, path, json.dumps(normalized, indent=1, sort_keys=True).encode())
        elif json.loads(self.fs.cat(path)) != normalized:
            raise PlanMismatchError(
                f"features under {path.rsplit('/', 1)[0]} were made by another evaluator set-up; delete that "
                "folder to recompute them"
            )

    def write_features(self, evaluator_key: str, index: int, shard: FeatureShard) -> None:
        """Write shard `index`'s features, then their commit marker."""
        data = _npz_bytes(**shard._asdict())
        paths = (
            self._feature_path(evaluator_key, index, "npz"),
            self._feature_path(evaluator_key, index, "json"),
        )
        self._write(*paths, data, len(shard.features))

    def read_features(self, evaluator_key: str, index: int) -> FeatureShard:
        """Shard `index`'s features (checksum verified)."""
        paths = (
            self._feature_path(evaluator_key, index, "npz"),
            self._feature_path(evaluator_key, index, "json"),
        )
        arrays = self._read(*paths)
        return FeatureShard(arrays["features"], arrays["logits"])
