"""A multi-node Ray cluster on this machine for the tests: one head and worker nodes, all on 127.0.0.1.

The head is conftest's `RayHeadCluster` (`ray start --head`, its own temp dir, stopped by its own
PIDs). Each worker node is a `ray start --address=<head>` with its own temp dir and ports, stopped by
SIGKILL of every process of it. A worker node may run in its own mount namespace with folders of the
driver's (the pytest temp dir) covered by an empty tmpfs: a node that shares no filesystem with the
driver, as on a cluster whose data and models live only on an object store
(tests/test_no_shared_filesystem.py). Needs root for that (`unshare --mount`); the namespace, and with
it the tmpfs, ends when its last process is killed.

Ray 2.60 refuses a second node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the setting that keeps the
head on 127.0.0.1), and without it rewrites 127.0.0.1 to the machine's public address, where the head
does not listen: so a worker node's `ray start` runs through `_WORKER_START`, which keeps 127.0.0.1
as given (`--node-ip-address 127.0.0.1`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

from conftest import RayHeadCluster

HIDE_ENV = "MASKGIT_TEST_HIDE"  # folders the worker node's own mount namespace covers with a tmpfs

_WORKER_START = (
    "import os, subprocess, sys\n"
    f"for folder in filter(None, os.environ.pop({HIDE_ENV!r}, '').split(os.pathsep)):\n"
    "    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'none', folder], check=True)\n"
    "import ray._private.services as services\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "main()\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mount_namespace(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/ns/mnt")
    return None


def _pids_in_namespace(namespace: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _mount_namespace(int(p)) == namespace]


class WorkerNode:
    """A `ray start --address=<head>` worker node on 127.0.0.1 with its own temp dir; killed by its PIDs.

    Args:
        head: the running head to join.
        num_cpus: the node's CPUs.
        hide: folders this node must not see: it runs in its own mount namespace with an empty tmpfs
            over each of them.
    """

    def __init__(self, head: RayHeadCluster, num_cpus: int, hide: Sequence[str] = ()):
        self.temp_dir = tempfile.mkdtemp(prefix="rw", dir="/tmp")
        self.node_manager_port = free_port()
        self.namespace: str | None = None  # its own mount namespace (with `hide`), else None
        env = {k: v for k, v in head.env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        if hide:
            env[HIDE_ENV] = os.pathsep.join(str(folder) for folder in hide)
        ports = {
            "--node-manager-port": self.node_manager_port,
            **{
                flag: free_port()
                for flag in (
                    "--object-manager-port",
                    "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port",
                    "--metrics-export-port",
                    "--runtime-env-agent-port",
                )
            },
        }
        unshare = ["unshare", "--mount", "--propagation", "private"] if hide else []
        subprocess.run(
            [
                *unshare,
                sys.executable,
                "-c",
                _WORKER_START,
                "start",
                f"--address={head.address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                *(f"{flag}={port}" for flag, port in ports.items()),
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        if hide:
            namespaces = {_mount_namespace(proc.pid) for proc in self.processes()} - {None}
            assert namespaces and _mount_namespace(os.getpid()) not in namespaces, namespaces
            (self.namespace,) = namespaces

    def processes(self) -> list:
        import psutil

        found = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                    found.append(proc)
        return found

    def kill(self) -> None:
        """Lose the node: SIGKILL every process of it (raylet, agents, its workers, anything else in
        its mount namespace)."""
        import psutil

        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        if self.namespace:
            for pid in _pids_in_namespace(self.namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def gone(self) -> bool:
        """No process of the node is left (and so neither is its mount namespace nor its tmpfs)."""
        if self.namespace and _pids_in_namespace(self.namespace):
            return False
        return not self.processes()


def _kill_head(head: RayHeadCluster) -> None:
    """SIGKILL every process of the head (a test cluster needs no graceful stop: saves ~15 s)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(head.temp_dir in part for part in proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)


@contextlib.contextmanager
def local_cluster(
    env: dict[str, str], *, head_cpus: int = 0, worker_cpus: Sequence[int] = (2, 2), hide: Sequence[str] = ()
) -> Iterator[tuple[RayHeadCluster, list[WorkerNode]]]:
    """A head (`head_cpus`) and one worker node per entry of `worker_cpus`, all on 127.0.0.1; every
    process stopped (and every worker's mount namespace gone) at the end.

    Args:
        env: environment of every Ray process (PYTHONPATH, AWS credentials...).
        hide: folders the worker nodes must not see (each in its own mount namespace); the head sees all.
    """
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    head = RayHeadCluster(env=env, num_cpus=head_cpus)
    workers: list[WorkerNode] = []
    try:
        head.start()
        with ThreadPoolExecutor(len(worker_cpus)) as pool:  # the nodes start side by side
            starting = [pool.submit(WorkerNode, head, num_cpus=cpus, hide=hide) for cpus in worker_cpus]
            for future in starting:
                with contextlib.suppress(Exception):  # a node that failed to start raises below
                    workers.append(future.result())
        for future in starting:
            future.result()
        yield head, workers
    finally:
        for worker in workers:
            worker.kill()
        _kill_head(head)
        head.stop()  # finds nothing left to stop; removes the head's temp dir
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(worker.gone() for worker in workers):
            time.sleep(0.2)
        for worker in workers:
            shutil.rmtree(worker.temp_dir, ignore_errors=True)
        assert all(worker.gone() for worker in workers), "a worker node's processes outlived the test"


__all__ = ["WorkerNode", "free_port", "local_cluster"]
