"""Hedged reads and writes of small objects: a second copy of a request that is late.

A request that has not answered within its deadline gets one more copy of itself, sent on a fresh
connection, and the first of the two to succeed wins; the other is cancelled ("hedged requests", Dean
and Barroso, The Tail at Scale, 2013). A slow answer then costs the deadline instead of the whole
slowness: a server that holds its answer (a stall shorter than botocore's `read_timeout` is waited
out, not cut), a body that drips in slowly (a per-read timeout never cuts it), or a retry's backoff
sleep after a 500 or a 503. The deadline fits the object: `HedgePolicy.after_s` plus the time the
bytes take at `bytes_per_s`.

Only requests whose repeat is harmless are hedged: a GET (reads nothing but the object) and a PUT of
the same bytes to the same key (the losing copy can only write what the winner wrote). DELETE is not
hedged: a losing copy applied after our next write would undo it; `storage.commit` avoids needing a
quick DELETE instead. Objects above `max_bytes` are not hedged (a second copy would double a large
transfer); s3fs splits those into ranged or multipart requests anyway.

Written by hand because neither botocore nor s3fs hedges: both only retry after a failure or a timeout.
Only for s3fs filesystems; any other filesystem gets its plain `cat_file` / `pipe_file`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

T = TypeVar("T")


@dataclass(frozen=True)
class HedgePolicy:
    """When a second copy of a request is sent.

    Attributes:
        after_s: seconds a request of an empty object may take before it is hedged; well above a
            healthy object store's first-byte latency (tens of ms), well below a stall.
        bytes_per_s: the slowest healthy transfer rate; adds size / bytes_per_s to the deadline.
        max_bytes: objects larger than this are not hedged.
    """

    after_s: float = 0.2
    bytes_per_s: float = 32 * 2**20
    max_bytes: int = 16 * 2**20

    def deadline_s(self, size: int | None) -> float:
        """Seconds before a request for an object of `size` bytes (None: unknown, small) is hedged."""
        return self.after_s + (size or 0) / self.bytes_per_s


HEDGE = HedgePolicy()
_ANSWERS = (FileNotFoundError, PermissionError)  # what the server says, not a failure to say it


def _is_s3(fs: AbstractFileSystem) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) and hasattr(fs, "loop")


async def _first_success(make: Callable[[], Awaitable[T]], after_s: float) -> T:
    """The result of `make()`, or of a second `make()` started when the first is `after_s` late,
    whichever answers first (the other is cancelled). "No such object" and "access denied" are
    answers too; any other error waits for the other copy, and the first error is raised when
    both fail."""
    tasks = [asyncio.ensure_future(make())]
    try:
        done, _ = await asyncio.wait(tasks, timeout=after_s)
        if done:
            return tasks[0].result()
        tasks.append(asyncio.ensure_future(make()))
        pending, error = set(tasks), None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None or isinstance(task.exception(), _ANSWERS):
                    return task.result()
                error = error or task.exception()
        assert error is not None
        raise error
    finally:
        for task in tasks:
            task.cancel()


def read_object(fs: AbstractFileSystem, path: str, *, size: int | None = None) -> bytes:
    """The bytes of the object at `path` (`size` when known sizes its deadline); hedged on S3.

    Raises FileNotFoundError when there is no object. Meant for objects up to `HEDGE.max_bytes`
    (shards, records, manifests); with an unknown `size` it is read in one GET.
    """
    if not _is_s3(fs) or (size is not None and size > HEDGE.max_bytes):
        return fs.cat_file(path)

    def get() -> Awaitable[Any]:
        return fs._cat_file(path, max_concurrency=1)  # one GET, no HEAD first: the size is known or small

    return sync(fs.loop, _first_success, get, HEDGE.deadline_s(size))


def write_object(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to the object at `path` in one PUT (hedged on S3 up to `HEDGE.max_bytes`)."""
    if not _is_s3(fs) or len(data) > HEDGE.max_bytes:
        fs.pipe_file(path, data)
        return
    sync(fs.loop, _first_success, lambda: fs._pipe_file(path, data), HEDGE.deadline_s(len(data)))


__all__ = ["HEDGE", "HedgePolicy", "read_object", "write_object"]
