"""A fault-injecting HTTP proxy on 127.0.0.1 between S3 clients and an S3 endpoint, for tests and benchmarks.

`S3FaultProxy` listens on a free 127.0.0.1 port and relays HTTP/1.1 byte for byte to the upstream
endpoint (the `Host` header is forwarded unchanged, so SigV4 signatures made for the proxy's address
still verify). Per request it may inject one of six faults, at the rates of a `FaultConfig`:

- `slowdown`: answer `503 SlowDown` with S3's XML error body (and `Retry-After` when configured)
  without forwarding the request — S3's throttling answer;
- `internal_error`: answer `500 InternalError` with S3's XML error body, without forwarding the
  request — S3's "we encountered an internal error, please try again";
- `reset`: forward the request, then send the response headers and part of the body (part of the
  header block when the body is empty) and reset the connection (RST) — a dropped connection;
- `truncate`: forward the request, then send the response headers and part of the body (part of the
  header block when the body is empty) and close the connection cleanly (FIN): fewer bytes than
  `Content-Length` promised, with no error on the wire;
- `stall`: forward the request, then hold its answer `stall_s` seconds — a slow server (a client
  whose read timeout is shorter cuts the connection and retries; the request itself was applied
  once, on time, so the retry is a plain repeat of it);
- `drip`: forward the request, then send its answer (the body, or the header block when there is no
  body) in small pieces spread over `drip_s` seconds, `drip_pause_s` apart — a slow but live
  server, which a per-read timeout never cuts.

The decision for a request is a pure function of (seed, method, target, Range header, how many times
this same request was seen before), so a run is reproducible whatever the interleaving of concurrent
connections, and a retried request draws afresh. `counts` says what was injected.

Bodies are streamed in both directions (Content-Length, `Transfer-Encoding: chunked` and S3's
aws-chunked uploads, which ride on either), keep-alive connections are kept, HEAD and range GETs pass
through. `Expect: 100-continue` is answered by the proxy itself (botocore does not sign that header).
What the clients do about the faults is described in docs/architecture.md#object-storage-retries.

    with LocalS3Server() as server, S3FaultProxy.for_server(server, FaultConfig.mixed(0.05)) as proxy:
        fs = s3fs.S3FileSystem(**proxy.storage_options)
        ...
        print(proxy.counts)   # FaultCounts(requests=..., connections=..., slowdown=..., ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

FAULT_KINDS = ("slowdown", "internal_error", "reset", "truncate", "stall", "drip")
_CHUNK = 1 << 16
_NO_BODY_STATUS = {204, 304}


@dataclass(frozen=True)
class FaultConfig:
    """Per-request fault rates (each in [0, 1], summing to at most 1) and their parameters.

    Attributes:
        slowdown_rate: fraction of requests answered `503 SlowDown`.
        reset_rate: fraction of requests whose response is cut mid-body by a connection reset.
        stall_rate: fraction of requests whose answer is held `stall_s` seconds.
        stall_s: length of a stall in seconds.
        retry_after_s: `Retry-After` header of a SlowDown answer (None: no header, as S3 does).
        seed: seeds the per-request decisions.
        internal_error_rate: fraction of requests answered `500 InternalError`.
        truncate_rate: fraction of requests whose response ends early with a clean close.
        drip_rate: fraction of requests whose answer is sent in pieces over `drip_s` seconds.
        drip_s: how long a dripped answer takes, whatever its size (keeps tests short).
        drip_pause_s: the pause between two pieces of a dripped answer (below any read timeout).
    """

    slowdown_rate: float = 0.0
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 2.0
    retry_after_s: int | None = None
    seed: int = 0
    internal_error_rate: float = 0.0
    truncate_rate: float = 0.0
    drip_rate: float = 0.0
    drip_s: float = 2.0
    drip_pause_s: float = 0.1

    def __post_init__(self) -> None:
        rates = self.rates
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}_rate must be in [0, 1], got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {sum(rates.values())} > 1")
        for name in ("stall_s", "drip_s", "drip_pause_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def mixed(cls, rate: float, *, seed: int = 0, stall_s: float = 2.0, drip_s: float = 2.0) -> FaultConfig:
        """`rate` of all requests faulted, split evenly between the six kinds."""
        return cls(**{f"{kind}_rate": rate / len(FAULT_KINDS) for kind in FAULT_KINDS},
                   stall_s=stall_s, drip_s=drip_s, seed=seed)  # fmt: skip

    @classmethod
    def only(cls, kind: str, rate: float, **parameters: Any) -> FaultConfig:
        """`rate` of all requests faulted, all of them with fault `kind` (one of `FAULT_KINDS`)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        return cls(**{f"{kind}_rate": rate}, **parameters)

    @property
    def rates(self) -> dict[str, float]:
        """Fault kind -> fraction of requests, in `FAULT_KINDS` order."""
        return {kind: getattr(self, f"{kind}_rate") for kind in FAULT_KINDS}

    @property
    def rate(self) -> float:
        """Fraction of requests faulted, all kinds together."""
        return sum(self.rates.values())


class FaultCounts(NamedTuple):
    """Requests seen and faults injected since start (or `reset_counts`)."""

    requests: int
    connections: int  # client connections accepted (fewer than requests: keep-alive works)
    slowdown: int
    reset: int
    stall: int
    internal_error: int = 0
    truncate: int = 0
    drip: int = 0

    @property
    def faults(self) -> int:
        """Faults injected, all kinds together."""
        return sum(getattr(self, kind) for kind in FAULT_KINDS)


# status line, S3 error code, message: the two errors the proxy answers itself
_ERRORS = {
    "slowdown": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal_error": ("500 Internal Server Error", "InternalError",
                       "We encountered an internal error. Please try again."),
}  # fmt: skip


def _error_response(fault: str, method: str, target: str, retry_after_s: int | None) -> bytes:
    status, code, message = _ERRORS[fault]
    request_id = uuid.uuid4().hex[:16].upper()
    resource = urlsplit(target).path.replace("&", "&amp;").replace("<", "&lt;")
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    headers = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/xml",
        f"Content-Length: {0 if method == 'HEAD' else len(body)}",
        f"x-amz-request-id: {request_id}",
        "Connection: keep-alive",
    ]
    if retry_after_s is not None and fault == "slowdown":
        headers.append(f"Retry-After: {retry_after_s}")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode()
    return head if method == "HEAD" else head + body


class _Head(NamedTuple):
    """A parsed HTTP message head: first line, headers (lower-cased name -> value), raw bytes."""

    first_line: str
    headers: dict[str, str]
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return cls(lines[0], headers, raw)

    def body_framing(self) -> tuple[str, int]:
        """("chunked", 0), ("length", n) or ("close", 0) (read until the connection closes)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return "chunked", 0
        if "content-length" in self.headers:
            return "length", int(self.headers["content-length"])
        return "close", 0

    def wants_close(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def _relay_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | _Buffer | None, framing: tuple[str, int]
) -> None:
    """Copy one message body from `reader` to `writer` (None: discard it), raw, in pieces."""

    async def copy(data: bytes) -> None:
        if writer is not None and data:
            writer.write(data)
            await writer.drain()

    kind, length = framing
    if kind == "length":
        while length > 0:
            data = await reader.read(min(_CHUNK, length))
            if not data:
                raise ConnectionError("peer closed mid-body")
            length -= len(data)
            await copy(data)
    elif kind == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            await copy(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:  # trailers, then an empty line
                while True:
                    line = await reader.readuntil(b"\r\n")
                    await copy(line)
                    if line == b"\r\n":
                        return
            remaining = size + 2  # the chunk and its CRLF
            while remaining > 0:
                data = await reader.read(min(_CHUNK, remaining))
                if not data:
                    raise ConnectionError("peer closed mid-chunk")
                remaining -= len(data)
                await copy(data)
    else:
        while data := await reader.read(_CHUNK):
            await copy(data)


class _Buffer:
    """A stand-in for a StreamWriter that keeps what is written (for an answer sent later)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class S3FaultProxy:
    """A fault-injecting reverse proxy for one S3 endpoint, on 127.0.0.1; `start()` / `stop()` or `with`.

    Args:
        upstream_url: the S3 endpoint, `http://127.0.0.1:PORT` (plain HTTP only).
        faults: what to inject; may be replaced at any time through the `faults` attribute.
        storage_options: the upstream's fsspec options; `storage_options` returns them with the
            endpoint pointed at the proxy.
    """

    def __init__(
        self, upstream_url: str, faults: FaultConfig | None = None, *, storage_options: dict | None = None
    ):
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"upstream must be http://127.0.0.1:PORT, got {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.faults = faults or FaultConfig()
        self._upstream_options = dict(storage_options or {})
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], int] = {}
        self._counts = dict.fromkeys(FaultCounts._fields, 0)
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def for_server(cls, server: Any, faults: FaultConfig | None = None) -> S3FaultProxy:
        """A proxy in front of a `demo.s3server.LocalS3Server` (its endpoint and credentials)."""
        return cls(server.endpoint_url, faults, storage_options=server.storage_options)

    # ------------------------------------------------------------------------------------------ API
    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def storage_options(self) -> dict:
        """The upstream's fsspec/s3fs options with the endpoint pointed at this proxy."""
        options = dict(self._upstream_options)
        options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": self.endpoint_url}
        return options

    @property
    def counts(self) -> FaultCounts:
        with self._lock:
            return FaultCounts(**self._counts)

    def reset_counts(self) -> None:
        """Zero the counts (the per-request decision history is kept)."""
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def start(self) -> S3FaultProxy:
        """Listen on 127.0.0.1 (a free port; the same one again after `stop()`) in a daemon thread."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        try:
            listening = asyncio.start_server(self._handle, "127.0.0.1", self._port or 0, limit=1 << 20)
            self._server = loop.run_until_complete(listening)
        except OSError as error:
            loop.close()
            raise RuntimeError(f"the fault proxy could not listen on 127.0.0.1: {error}") from error
        self._port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self._thread = self._loop = self._server = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ internals
    def _decide(self, method: str, target: str, range_header: str) -> str | None:
        """The fault for this request (None: none), from the seed and the request's identity."""
        faults = self.faults
        parts = urlsplit(target)
        query = parse_qsl(parts.query, keep_blank_values=True)
        query = [(name, value) for name, value in query if not name.startswith("X-Amz-")]
        key = (method, parts.path + "?" + urlencode(query), range_header)
        with self._lock:
            occurrence = self._seen.get(key, 0)
            self._seen[key] = occurrence + 1
            self._counts["requests"] += 1
            if faults.rate <= 0:
                return None
            draw = random.Random(f"{faults.seed}\0{key}\0{occurrence}").random()
            bounds = itertools.accumulate(faults.rates.values())
            kind = next((name for name, bound in zip(FAULT_KINDS, bounds) if draw < bound), None)
            if kind is not None:
                self._counts[kind] += 1
            return kind

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._counts["connections"] += 1
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    raw = await client_reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed its keep-alive connection
                request = _Head.parse(raw)
                upstream, keep = await self._exchange(request, client_reader, client_writer, upstream)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            client_writer.transport.abort()
        except asyncio.CancelledError:  # stop(): end quietly
            client_writer.transport.abort()
        finally:
            self._tasks.discard(task)
            if upstream is not None:
                upstream[1].transport.abort()
            with contextlib.suppress(Exception):
                client_writer.close()

    async def _exchange(self, request: _Head, client_reader, client_writer, upstream):
        """Serve one request; returns (the upstream connection to reuse or None, keep the client?)."""
        method, target = request.first_line.split(" ")[:2]
        fault = self._decide(method, target, request.headers.get("range", ""))
        framing = request.body_framing()
        if framing[0] == "close":
            framing = ("length", 0)  # a request without length or chunking has no body
        expects_continue = request.headers.get("expect", "").lower() == "100-continue"
        raw_head = request.raw
        if expects_continue:  # answered here; the header is unsigned, so dropping it is safe
            lines = [line for line in raw_head.split(b"\r\n") if not line.lower().startswith(b"expect:")]
            raw_head = b"\r\n".join(lines)

        if fault in _ERRORS:
            if not expects_continue:  # else answered before the body is sent, and the connection closed
                await _relay_body(client_reader, None, framing)
            client_writer.write(_error_response(fault, method, target, self.faults.retry_after_s))
            await client_writer.drain()
            return upstream, not (expects_continue or request.wants_close())

        for fresh in (False, True):  # a bodyless request on a kept-alive connection the server has
            if fresh or upstream is None or upstream[0].at_eof():  # closed meanwhile is resent once
                if upstream is not None:
                    upstream[1].transport.abort()
                upstream = await asyncio.open_connection(*self.upstream, limit=1 << 20)
            up_reader, up_writer = upstream
            up_writer.write(raw_head)
            if expects_continue and not fresh:
                client_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await client_writer.drain()
            await _relay_body(client_reader, up_writer, framing)
            try:
                response = await self._response_head(up_reader)
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                if fresh or framing != ("length", 0):
                    raise
        status = int(response.first_line.split(" ")[1])
        body_framing = response.body_framing()
        if method == "HEAD" or status in _NO_BODY_STATUS:
            body_framing = ("length", 0)

        if fault in ("reset", "truncate"):
            await self._send_partial(response, body_framing, up_reader, client_writer)
            up_writer.transport.abort()
            if fault == "truncate":  # an orderly FIN after too few bytes
                client_writer.close()
                return None, False
            await asyncio.sleep(0.05)  # let the client read the partial answer before the reset arrives
            _reset(client_writer)
            raise ConnectionResetError("injected reset")
        if fault == "stall":  # the request has been applied; only its answer is late
            await asyncio.sleep(self.faults.stall_s)
        if fault == "drip":
            await self._send_dripped(response, body_framing, up_reader, client_writer)
        else:
            client_writer.write(response.raw)
            await _relay_body(up_reader, client_writer, body_framing)
        if body_framing[0] == "close" or response.wants_close():
            up_writer.transport.abort()
            return None, False
        return upstream, not request.wants_close()

    @staticmethod
    async def _response_head(up_reader: asyncio.StreamReader) -> _Head:
        """The final response head (interim 1xx answers are skipped)."""
        while True:
            response = _Head.parse(await up_reader.readuntil(b"\r\n\r\n"))
            if int(response.first_line.split(" ")[1]) >= 200:
                return response

    async def _send_partial(self, response: _Head, framing, up_reader, client_writer) -> None:
        """Headers plus the first part of the body (or half the header block); the caller ends it."""
        kind, length = framing
        if kind == "length" and length < 2:
            client_writer.write(response.raw[: len(response.raw) // 2])
        else:
            client_writer.write(response.raw)
            want = length // 2 if kind == "length" else _CHUNK // 2
            sent = 0
            while sent < want:
                data = await up_reader.read(min(_CHUNK, want - sent))
                if not data:
                    break
                client_writer.write(data)
                sent += len(data)
        await client_writer.drain()

    async def _send_dripped(self, response: _Head, framing, up_reader, client_writer) -> None:
        """The whole answer in pieces over `drip_s` seconds: the body, or the head when there is none."""
        body = _Buffer()
        await _relay_body(up_reader, body, framing)
        if body.data:
            client_writer.write(response.raw)
        data = bytes(body.data) or response.raw
        pause = self.faults.drip_pause_s
        pieces = max(1, round(self.faults.drip_s / pause)) if pause > 0 else 1
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            if start:
                await asyncio.sleep(pause)
            client_writer.write(data[start : start + size])
            await client_writer.drain()


__all__ = ["FAULT_KINDS", "FaultConfig", "FaultCounts", "S3FaultProxy"]
