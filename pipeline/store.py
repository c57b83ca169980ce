"""The token store: a versioned, self-describing set of token shards at any fsspec URL.

Writer and reader live side by side, after mosaicml/streaming's writer.py / reader.py + index.json;
the bytes of one shard are encoded/decoded in pipeline/shard_codec.py (re-exported here).
Layout of a store at `<root>` (a local path or `s3://bucket/prefix`):

    <root>/manifest.json          committed LAST, in one PUT; until it exists the store is not readable
    <root>/shards/shard-000042.arrow     (store_format "arrow": an Arrow IPC file, zstd)
    <root>/shards/shard-000042.zarr.zip  (store_format "zarr": a Zarr v3 store in a zip)
    <root>/rejects.jsonl          inputs that could not become images, with their reasons (or absent)
    <root>/_plan.json             the settings a writer started with (reruns must match them)
    <root>/_commits/shard-000042.json    one commit record per finished shard (survives crashes)

Each shard is one object, written whole by exactly one task and visible atomically (never two writers
into one Zarr store: zarr-python loses data then, zarr#3682). Shard, commit record and manifest follow
the one commit protocol of `storage.commit` (object whole, then its record, the manifest last).
Shard bytes are deterministic (no timestamps), so a resumed run yields the same checksums as an
uninterrupted one.

Shapes: n samples in a shard, V views (0 original, 1 horizontally flipped), h×w token grid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import fsspec

from pipeline.shard_codec import (
    STORE_FORMATS,
    StoreError,
    StoreFormatError,
    TokenShard,
    decode_shard_bytes,
    encode_shard,
)
from storage.commit import pin_plan, read_json, read_verified, sha256_hex, write_committed
from storage.filesystem import url_to_fs
from storage.hedging import read_object
from weights.config_base import FrozenConfig

__all__ = [
    "FORMAT_VERSION",
    "STORE_FORMATS",
    "ShardChecksumError",
    "ShardCommit",
    "ShardInfo",
    "ShardMissingError",
    "StoreError",
    "StoreFormatError",
    "StoreIncompleteError",
    "StoreManifest",
    "StoreSettingsError",
    "TokenShard",
    "TokenStore",
    "TokenStoreWriter",
    "decode_shard",
    "encode_shard",
    "open_token_store",
    "shard_path",
]

FORMAT_VERSION = 1
VIEWS = ("original", "hflip")
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "_plan.json"
REJECTS_NAME = "rejects.jsonl"
SHARD_DIR = "shards"
COMMIT_DIR = "_commits"
TOKEN_DTYPE = "uint16"  # codebooks up to 65,536 entries (the reference uses 1024)
_SHARD_SUFFIX = {"arrow": ".arrow", "zarr": ".zarr.zip"}


class StoreIncompleteError(StoreError):
    """No manifest.json: the store was never finished, or the URL is not a token store."""


class StoreSettingsError(StoreError):
    """A writer was opened on a store begun with different settings."""


class ShardMissingError(StoreError):
    """A shard listed in the manifest has no object."""


class ShardChecksumError(StoreError):
    """A shard object's size or sha256 differs from the manifest."""


@dataclass(frozen=True)
class ShardInfo(FrozenConfig):
    """One shard object: `path` relative to the store root, its sample count, sha256 and size."""

    unknown_key_label = "shard record field"

    path: str
    num_samples: int
    sha256: str
    bytes: int


@dataclass(frozen=True)
class StoreManifest(FrozenConfig):
    """Everything a reader needs to trust and interpret the shards (`manifest.json`).

    Its JSON is `to_dict()` plus `num_samples` (the sum over shards, which `from_dict` checks); an
    unknown key is an error that names it, as in every config of ours.
    """

    unknown_key_label = "manifest field"

    store_format: str
    codebook_size: int
    grid: tuple[int, int]
    resolution: int
    views: tuple[str, ...]
    tokenizer: dict[str, Any]  # {"config": VQGANConfig.to_dict(), "weights_sha256": "..."}
    class_names: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    sources: tuple[str, ...] = ()
    rejects: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    created_by: str = "maskgit-pipeline"
    dtype: str = TOKEN_DTYPE
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.store_format not in STORE_FORMATS:
            raise StoreFormatError(f"store_format must be one of {STORE_FORMATS}, got {self.store_format!r}")
        if not self.views or tuple(self.views) != VIEWS[: len(self.views)]:
            raise StoreFormatError(f"views must be ['original'] or ['original', 'hflip'], got {self.views}")
        if self.dtype != TOKEN_DTYPE or not 0 < self.codebook_size <= 65536:
            raise StoreFormatError(f"tokens must be uint16 with codebook_size <= 65536, got {self.dtype}")

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "num_samples": self.num_samples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreManifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"token store format_version is {version!r}; this code reads format_version {FORMAT_VERSION}"
            )
        stored = {key: value for key, value in data.items() if key != "num_samples"}
        try:
            manifest = super().from_dict(stored)
        except StoreFormatError:
            raise
        except (ValueError, KeyError, TypeError) as error:  # an unknown, missing or mistyped field
            raise StoreFormatError(f"manifest.json: {error}") from None
        if "num_samples" in data and int(data["num_samples"]) != manifest.num_samples:
            raise StoreFormatError(
                f"manifest num_samples {data['num_samples']} != sum over shards {manifest.num_samples}"
            )
        return manifest

    @classmethod
    def _from_stored(cls, values: dict[str, Any]) -> dict[str, Any]:
        """JSON lists back to the tuple fields, shard records to `ShardInfo`."""
        values = dict(values)
        values["grid"] = tuple(int(side) for side in values["grid"])
        for name in ("views", "class_names", "sources"):
            if name in values:
                values[name] = tuple(values[name])
        values["shards"] = tuple(ShardInfo.from_dict(shard) for shard in values["shards"])
        return values


def shard_path(index: int, store_format: str) -> str:
    """Path of shard `index` relative to the store root, e.g. 'shards/shard-000042.arrow'."""
    return f"{SHARD_DIR}/shard-{index:06d}{_SHARD_SUFFIX[store_format]}"


def decode_shard(data: bytes, manifest: StoreManifest) -> TokenShard:
    """Parse one shard object's bytes (pure, no I/O).

    Returns:
        TokenShard with tokens (n, V, h, w) uint16 (V = len(manifest.views)), labels (n,) int64,
        image_ids (n,) str.
    """
    return decode_shard_bytes(data, manifest.store_format, len(manifest.views), tuple(manifest.grid))


# --- reader ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenStore:
    """A committed token store opened for reading (see `open_token_store`)."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str  # the store root as a path inside `fs` (no protocol)
    manifest: StoreManifest

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def shard_url(self, index: int) -> str:
        """Full URL of shard `index` (with the store URL's protocol)."""
        return f"{self.url.rstrip('/')}/{self.manifest.shards[index].path}"

    def fetch_shard_bytes(self, index: int) -> bytes:
        """The verified bytes of shard `index`.

        Raises:
            ShardMissingError: the object does not exist.
            ShardChecksumError: its size or sha256 differs from the manifest.
        """
        info = self.manifest.shards[index]
        try:
            data = read_object(self.fs, f"{self.root}/{info.path}", size=info.bytes)
        except FileNotFoundError:
            raise ShardMissingError(f"shard {index} ({self.shard_url(index)}) is missing") from None
        if len(data) != info.bytes:
            raise ShardChecksumError(
                f"shard {index} ({self.shard_url(index)}) has {len(data)} bytes; "
                f"the manifest says {info.bytes}"
            )
        if sha256_hex(data) != info.sha256:
            raise ShardChecksumError(f"shard {index} ({self.shard_url(index)}) fails its sha256 check")
        return data

    def read_shard(self, index: int) -> TokenShard:
        """Fetch, verify and decode shard `index`."""
        return decode_shard(self.fetch_shard_bytes(index), self.manifest)

    def read_rejects(self) -> list[dict[str, Any]]:
        """The rejected inputs ({"source", "image_id", "reason", "detail"}) in shard order."""
        if self.manifest.rejects is None:
            return []
        text = self.fs.cat_file(f"{self.root}/{self.manifest.rejects}").decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def open_token_store(url: str, storage_options: dict[str, Any] | None = None) -> TokenStore:
    """Open a committed store: read and validate its manifest.json.

    Raises:
        StoreIncompleteError: no manifest.json (unfinished store, or not a token store).
        StoreFormatError: the store's format_version is not FORMAT_VERSION.
    """
    fs, root = url_to_fs(url, storage_options)
    root = root.rstrip("/")
    data = read_json(fs, f"{root}/{MANIFEST_NAME}")
    if data is None:
        raise StoreIncompleteError(
            f"{url} has no {MANIFEST_NAME}: the store is incomplete (its writer has not finished; rerun it "
            "to resume) or it is not a token store"
        )
    return TokenStore(url=url, fs=fs, root=root, manifest=StoreManifest.from_dict(data))


# --- writer ---------------------------------------------------------------------------------------


class ShardCommit(NamedTuple):
    """What a finished shard left behind: its object and the inputs it rejected."""

    shard: ShardInfo
    rejects: list[dict[str, Any]]
    extra: dict[str, Any] | None = None  # whatever the writer attached (e.g. the largest label seen)


class TokenStoreWriter:
    """Writes one store: shard objects (any order, any process), commit records, then the manifest.

    Every method touches only its own objects, so many tasks can hold a writer on the same root; the
    caller guarantees each shard index is written by one task at a time.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.fs, root = url_to_fs(url, storage_options)
        self.root = root.rstrip("/")

    # settings ----------------------------------------------------------------------------------

    def ensure_plan(self, plan: dict[str, Any]) -> bool:
        """Record the run's settings, or check them against the ones the store was begun with.

        Returns:
            True when the store already had this plan (a resumed or repeated run).

        Raises:
            StoreSettingsError: naming each setting that differs.
        """
        plan_path = f"{self.root}/{PLAN_NAME}"
        # The manifest first: only a finished store needs its plan read here; pin_plan reads it anyway.
        if self.fs.exists(f"{self.root}/{MANIFEST_NAME}") and read_json(self.fs, plan_path) is None:
            raise StoreSettingsError(f"{self.url} holds a store without a plan; write to a new URL")
        differences = pin_plan(self.fs, plan_path, plan)
        if differences:
            diffs = [
                f"{key}={_short(old)} (this run asks for {_short(new)})"
                for key, (old, new) in differences.items()
            ]
            raise StoreSettingsError(
                f"the store at {self.url} was begun with other settings: {'; '.join(diffs)}. "
                "Use a new output URL, or delete the old store to start over."
            )
        return differences is not None

    # shards ------------------------------------------------------------------------------------

    def write_shard(
        self,
        index: int,
        shard: TokenShard,
        store_format: str,
        rejects: list[dict[str, Any]] = (),
        extra: dict[str, Any] | None = None,
    ) -> ShardInfo:
        """Write shard `index` as one object, then its commit record; returns the shard's info.

        Args:
            rejects: the inputs of this shard that were rejected (they go to the store's rejects file).
            extra: JSON-ready facts to keep in the commit record (`ShardCommit.extra`).
        """
        data = encode_shard(shard, store_format)
        info = ShardInfo(shard_path(index, store_format), len(shard.labels), sha256_hex(data), len(data))
        record = {"index": index, "shard": info.to_dict(), "rejects": list(rejects), "extra": extra}
        write_committed(
            self.fs,
            {f"{self.root}/{info.path}": data},
            f"{self.root}/{_commit_path(index)}",
            json.dumps(record, sort_keys=True).encode(),
        )
        return info

    def read_commit(self, index: int, *, verify: bool = True) -> ShardCommit | None:
        """The commit of shard `index`, or None when it is absent or (with `verify`) its object is
        missing or does not match the recorded size and sha256 (so the shard gets redone)."""
        record = read_json(self.fs, f"{self.root}/{_commit_path(index)}")
        if record is None:
            return None
        info = ShardInfo.from_dict(record["shard"])
        shard = f"{self.root}/{info.path}"
        if verify and read_verified(self.fs, shard, sha256=info.sha256, size=info.bytes) is None:
            return None
        return ShardCommit(info, list(record["rejects"]), record.get("extra"))

    def committed_indices(self) -> set[int]:
        """Indices with a commit record (unverified; `read_commit` verifies one)."""
        self.fs.invalidate_cache()  # other processes write commit records; never trust a cached listing
        try:
            names = self.fs.ls(f"{self.root}/{COMMIT_DIR}", detail=False)
        except FileNotFoundError:
            return set()
        return {int(os.path.basename(n)[len("shard-") : -len(".json")]) for n in names if n.endswith(".json")}

    # commit ------------------------------------------------------------------------------------

    def commit(self, manifest: StoreManifest, commits: list[ShardCommit]) -> StoreManifest:
        """Write the rejects file and, last, manifest.json listing `commits` in order."""
        rejects = [reject for commit in commits for reject in commit.rejects]
        objects = {}
        if rejects:
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
            objects[f"{self.root}/{REJECTS_NAME}"] = lines.encode()
        final = StoreManifest(
            **{
                **_fields(manifest),
                "shards": tuple(c.shard for c in commits),
                "rejects": REJECTS_NAME if rejects else None,
            }
        )
        write_committed(
            self.fs, objects, f"{self.root}/{MANIFEST_NAME}", json.dumps(final.to_dict(), indent=1).encode()
        )
        return final


def _commit_path(index: int) -> str:
    return f"{COMMIT_DIR}/shard-{index:06d}.json"


def _fields(manifest: StoreManifest) -> dict[str, Any]:
    return {name: getattr(manifest, name) for name in manifest.__dataclass_fields__}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
