"""Getting verified token shards to a reader: retries, a node-local disk cache, background prefetch.

Three pieces, leaf first:

- `RetryPolicy` + `ShardSource`: fetch one shard's bytes through `pipeline.store` (which checks size
  and sha256), retrying what botocore and s3fs cannot (a checksum mismatch, a whole outage) with
  exponential backoff and jitter, on top of their own retries (`storage.filesystem` adds them; the
  layers are described there). The fsspec filesystem is opened lazily in the
  process that uses it and reopened after a fork or a failure: an async S3 client inherited from a
  parent process can deadlock in a forked DataLoader worker (fsspec#835).
- `DiskCache`: a bounded, content-addressed directory of shard objects (`<sha256>.shard`) that every
  process of a node may share. Files appear atomically (temp file + rename), a per-shard file lock
  keeps two processes from downloading the same shard, and the least recently used files are
  evicted past the byte limit. Eviction cannot break a reader: a file is read whole, and a reader
  that misses a file simply fetches it again.
- `ShardPrefetcher`: loads (fetches + decodes) the shards of a known sequence in background threads,
  at most `depth` ahead of the consumer, so memory is bounded by the depth, never by the store size.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.store import (
    ShardChecksumError,
    ShardInfo,
    ShardMissingError,
    StoreError,
    StoreManifest,
    TokenShard,
    TokenStore,
    decode_shard,
    sha256_hex,
)
from storage.filesystem import url_to_fs

logger = logging.getLogger(__name__)


def private_client_options(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options for a reader's own filesystem instance: never a shared (or inherited) cached
    client. The object-store retry settings are added by `storage.filesystem.url_to_fs`."""
    options = dict(storage_options or {})
    options.setdefault("skip_instance_cache", True)
    return options


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a shard fetch is retried.

    Transient errors (network, timeouts, 5xx, throttling) get `max_attempts` tries with delays
    min(max_delay_s, base_delay_s * 2**k) of which a random half is jitter. A missing shard or a
    checksum mismatch is retried only `verify_attempts` times in all (it may be a half-finished
    upload or a truncated transfer, but is usually permanent and must fail clearly).
    """

    max_attempts: int = 8
    base_delay_s: float = 0.25
    max_delay_s: float = 10.0
    verify_attempts: int = 2

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class ShardFetchError(OSError):
    """A shard could not be fetched after every retry (the store itself may be fine)."""


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errors += [botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        errors.append(aiohttp.ClientError)
    return tuple(errors)


class ShardSource:
    """Verified shard bytes of one store, through an optional disk cache, with retries.

    Picklable and fork-safe: only the URL, options and manifest travel; the filesystem is opened on
    first use in each process.
    """

    def __init__(
        self,
        url: str,
        manifest: StoreManifest,
        storage_options: dict[str, Any] | None = None,
        *,
        cache: DiskCache | None = None,
        retry: RetryPolicy | None = None,
    ):
        self.url = url
        self.manifest = manifest
        self.cache = cache
        self.retry = retry or RetryPolicy()
        self._storage_options = private_client_options(storage_options)
        self._store: TokenStore | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_store=None, _pid=-1, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open_store(self, reopen: bool = False) -> TokenStore:
        """This process's store handle (the manifest is not re-read: it is already verified)."""
        with self._lock:
            if reopen or self._store is None or self._pid != os.getpid():
                fs, root = url_to_fs(self.url, self._storage_options)
                self._store = TokenStore(url=self.url, fs=fs, root=root.rstrip("/"), manifest=self.manifest)
                self._pid = os.getpid()
            return self._store

    def fetch(self, index: int) -> bytes:
        """The verified bytes of shard `index` (from the cache when it holds them)."""
        info = self.manifest.shards[index]
        if self.cache is None:
            return self._download(index)
        data = self.cache.read(info)
        if data is not None:
            return data
        with self.cache.lock(info):  # another process of this node may be downloading it right now
            data = self.cache.read(info)
            if data is None:
                data = self._download(index)
                self.cache.write(info, data)
        return data

    def load(self, index: int) -> TokenShard:
        """Fetch and decode shard `index`: tokens (n, V, h, w) uint16, labels (n,), image_ids (n,)."""
        return decode_shard(self.fetch(index), self.manifest)

    def _download(self, index: int) -> bytes:
        transient = _transient_errors()
        verify_failures = 0
        reopen = False
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return self._open_store(reopen).fetch_shard_bytes(index)
            except (ShardMissingError, ShardChecksumError) as error:
                verify_failures += 1
                if verify_failures >= self.retry.verify_attempts or attempt == self.retry.max_attempts:
                    raise
                reason = error
            except StoreError:
                raise
            except PermissionError:  # wrong credentials or a denied bucket: retrying cannot help
                raise
            except transient as error:
                if attempt == self.retry.max_attempts:
                    raise ShardFetchError(
                        f"shard {index} ({self.url}/{self.manifest.shards[index].path}) could not be "
                        f"fetched after {attempt} attempts; last error: {error!r}"
                    ) from error
                reason = error
            delay = self.retry.delay_s(attempt)
            logger.warning(
                "shard %d: attempt %d of %d failed (%s); retrying in %.2f s",
                index,
                attempt,
                self.retry.max_attempts,
                type(reason).__name__,
                delay,
            )
            time.sleep(delay)
            reopen = True  # a fresh client after a failure: stale pooled connections are not reused
        raise AssertionError("unreachable")


class DiskCache:
    """A bounded, content-addressed directory of shard objects, shareable by a node's processes.

    Args:
        directory: where the files live (created if needed).
        limit_bytes: evict least recently used files to stay at or below this many bytes; a shard
            larger than the limit is simply not cached. Writers in several threads or processes
            may overshoot it briefly by the shards they are writing at that moment.
    """

    def __init__(self, directory: str | os.PathLike, limit_bytes: int):
        if limit_bytes < 0:
            raise ValueError(f"cache limit must be >= 0 bytes, got {limit_bytes}")
        self.directory = Path(directory)
        self.limit_bytes = int(limit_bytes)
        (self.directory / "locks").mkdir(parents=True, exist_ok=True)

    def path(self, info: ShardInfo) -> Path:
        return self.directory / f"{info.sha256}.shard"

    def read(self, info: ShardInfo) -> bytes | None:
        """The cached bytes of a shard when present and intact (a corrupt file is removed), else None."""
        path = self.path(info)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != info.bytes or sha256_hex(data) != info.sha256:
            logger.warning("cached shard %s is corrupt; fetching it again", path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # least recently *used* goes first
        return data

    def write(self, info: ShardInfo, data: bytes) -> bool:
        """Store a verified shard atomically, evicting old files first; False when it cannot fit."""
        if len(data) > self.limit_bytes:
            return False
        self._evict(free_bytes=len(data))
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path(info))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return True

    def _evict(self, free_bytes: int) -> None:
        entries = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".shard"):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total + free_bytes <= self.limit_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size

    def size_bytes(self) -> int:
        """Bytes of cached shards now on disk."""
        return sum(p.stat().st_size for p in self.directory.glob("*.shard"))

    @contextlib.contextmanager
    def lock(self, info: ShardInfo) -> Iterator[None]:
        """Exclusive, cross-process lock for downloading one shard (flock: released if a process dies)."""
        with open(self.directory / "locks" / f"{info.sha256}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class ShardPrefetcher:
    """Loads the shards of a known read sequence ahead of time in background threads.

    The consumer asks for sequence positions in non-decreasing order (`get`) and says which it no
    longer needs (`release_before`); at most `depth` positions from the oldest unreleased one are
    loaded or loading at any time, so memory is bounded by `depth` decoded shards.

    Args:
        load: shard index -> decoded shard (called in the worker threads).
        sequence: shard indices in the order the consumer will need them (repeats allowed).
        depth: how many positions may be held at once (>= what one batch needs together).
        threads: background threads fetching in parallel.
    """

    def __init__(self, load: Callable[[int], TokenShard], sequence: Sequence[int], depth: int, threads: int):
        self._load = load
        self._sequence = list(sequence)
        self._depth = max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="shard-prefetch")
        self._futures: dict[int, Future] = {}
        self._low = 0  # oldest position still held
        self._next = 0  # next position to submit
        self._fill()

    def _fill(self) -> None:
        while self._next < min(len(self._sequence), self._low + self._depth):
            self._futures[self._next] = self._pool.submit(self._load, self._sequence[self._next])
            self._next += 1

    def get(self, position: int) -> TokenShard:
        """The decoded shard at `position` of the sequence (blocks until it is loaded)."""
        if position < self._low:
            raise IndexError(f"sequence position {position} was already released (oldest held: {self._low})")
        if position >= self._low + self._depth:
            raise IndexError(f"sequence position {position} is beyond the prefetch depth {self._depth}")
        self._fill()
        return self._futures[position].result()

    def release_before(self, position: int) -> None:
        """Drop every position before `position` and start loading the ones that now fit."""
        for old in range(self._low, min(position, self._next)):
            future = self._futures.pop(old, None)
            if future is not None:
                future.cancel()
        self._low = max(self._low, position)
        self._next = max(self._next, self._low)
        self._fill()

    def close(self) -> None:
        """Cancel queued loads and drop every held shard (running downloads finish in the background)."""
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
