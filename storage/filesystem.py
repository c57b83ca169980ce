"""URL -> filesystem for every reader and writer of ours, with the object-store retry settings in one place.

Every reader and writer of ours that opens a URL (token store reader and writer, the input sources,
model folders, training checkpoints and outputs, export, sampling, serving, evaluation) opens it
through `url_to_fs` / `open_file`, so an `s3://` client always gets botocore's retry mode and
timeouts unless the caller's `storage_options["config_kwargs"]` says otherwise (a caller's key wins,
key by key). Callers pass their options as given; nobody adds the defaults by hand. This package
sits at the bottom of the layout (it imports nothing of ours), so `weights/` applies the same
retries as the token store.

What is retried where, for an S3 request (outermost last):

1. botocore (`S3_CONFIG_DEFAULTS`, "standard" mode): every request (GET, PUT, HEAD, LIST, multipart
   parts) up to `max_attempts` retries after the first try, exponential backoff with jitter (a
   random delay below 2**(retry - 1) s, at most 20 s). Retried: throttling (`503 SlowDown`), other
   5xx answers, connection errors (refused, reset, closed before or while the response head
   arrives) and timeouts: `connect_timeout`, and `read_timeout` for a server that stops answering
   (a stall longer than it is cut and retried; `read_timeout` is per socket read, so a body that
   drips in slowly is never cut by it). Its backoff before a retry is up to 1 s (0.5 s on average).
2. s3fs (`S3FileSystem.retries`, 5 attempts, 0.1-0.8 s apart; a class attribute, not a storage
   option): the whole call including reading the response *body*, which botocore does not retry — a
   connection reset mid-body or a body cut short by a clean close (`ClientPayloadError` /
   `ResponseStreamingError`) is refetched here, as are `SlowDown` errors that outlived botocore's
   attempts.
3. Our code retries only what neither library can: the streaming loader's `RetryPolicy`
   (`pipeline.shard_cache.ShardSource`) refetches a shard whose checksum does not match (a truncated
   transfer) and rides out a whole outage (a restarting server) with a fresh client. Writers have
   no loop of their own: a shard, commit record or checkpoint file is one PUT that the layers above
   retry; a job that still fails is rerun and resumes (the token store skips committed shards, a
   training run restarts from its latest complete checkpoint).

What is slow rather than failed (a stall, a drip, a retry's backoff) is cut short by *hedging*
(`storage.hedging`): a GET or PUT of a small object that has not answered within a deadline fitted to
its size gets a second copy, and the first answer wins. The token store's shard reads, and every
object, record and manifest of `storage.commit`, go through it.

`demo.s3_fault_proxy` injects six faults (SlowDown, InternalError, reset mid-body, truncated body,
stall, drip) in the tests (`tests/test_s3_faults.py`) and in `benchmarks/bench_s3_faults.py`.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import fsspec

# botocore Config keyword arguments (s3fs `config_kwargs`) for every s3:// client of ours.
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    # "standard", not "adaptive": adaptive also throttles the client's own request rate after a
    # SlowDown, which cost 2.3x the time of standard mode for the same 5 % of faults here
    # (benchmarks/bench_s3_faults.py measures both).
    "retries": {"max_attempts": 5, "mode": "standard"},
    "connect_timeout": 10,  # seconds to open a connection
    "read_timeout": 60,  # seconds without a byte from the server before botocore cuts and retries
    # botocore's default is 10: a reader's 8 fetch threads plus their hedged copies (storage/hedging.py)
    # would wait for a free connection exactly when a request is slow
    "max_pool_connections": 32,
}
S3_PROTOCOLS = ("s3://", "s3a://")


def _with_retry_defaults(url: str | os.PathLike, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """`storage_options` plus `S3_CONFIG_DEFAULTS` under `config_kwargs` for an s3:// URL.

    Keys the caller set in `config_kwargs` are kept; the input is not modified. Other URLs get the
    options unchanged (a copy).
    """
    options = dict(storage_options or {})
    if os.fspath(url).startswith(S3_PROTOCOLS):
        config = copy.deepcopy(S3_CONFIG_DEFAULTS)
        config.update(copy.deepcopy(options.get("config_kwargs") or {}))  # botocore edits `retries`
        options["config_kwargs"] = config
    return options


def is_local(url: str | os.PathLike) -> bool:
    """Whether `url` is on the local disk (a plain path or a `file://` URL)."""
    protocol, _ = fsspec.core.split_protocol(os.fspath(url))
    return protocol in (None, "file", "local")


def url_to_fs(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """`fsspec.core.url_to_fs` with our retry defaults: (filesystem, path inside it)."""
    return fsspec.core.url_to_fs(os.fspath(url), **_with_retry_defaults(url, storage_options))


def open_file(url: str | os.PathLike, mode: str = "rb", storage_options: dict[str, Any] | None = None):
    """`fsspec.open` with our retry defaults (use as a context manager)."""
    return fsspec.open(os.fspath(url), mode, **_with_retry_defaults(url, storage_options))


__all__ = ["S3_CONFIG_DEFAULTS", "is_local", "open_file", "url_to_fs"]
