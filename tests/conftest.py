"""Shared fixtures: real servers on 127.0.0.1 (SeaweedFS S3, Ray) and real data (Fashion-MNIST).

Every server a test needs is started here and stopped at the end of the session, so the suite runs on
a fresh machine with nothing but scripts/setup.sh done.
"""

from __future__ import annotations

import contextlib
import os

# Ray binds 127.0.0.1 everywhere with this set (docs/architecture.md#platform-notes); keep test
# processes from oversubscribing the 2 cores of CI.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Multi-threaded OpenBLAS decompositions (FID's sqrtm/eigh) slow down 40x when Ray workers share the
# cores with the test process; one thread is both faster and predictable here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from jobs.train.deepspeed_config import select_accelerator

# DeepSpeed's accelerator follows the hardware: CPU here, CUDA on a GPU machine (scripts/gpu_check.sh).
select_accelerator()

TORCH_THREADS = min(2, os.cpu_count() or 1)
torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test starts with the suite's torch thread count, whatever an earlier test set."""
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 gateway on 127.0.0.1 with a bucket, for the whole session."""
    from demo.s3server import LocalS3Server

    server = LocalS3Server(data_dir=tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def fashion_mnist():
    """Fashion-MNIST train split: images (60000, 28, 28) uint8, labels (60000,) int64."""
    from demo.example_data import load_fashion_mnist

    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def fashion_mnist_small(fashion_mnist):
    """A balanced, seeded 200-image subset of Fashion-MNIST as RGB 32x32: (images, labels)."""
    from demo.example_data import balanced_subset, to_rgb

    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=20, seed=0)
    return to_rgb(images[index], size=32), labels[index]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class RayHeadCluster:
    """A real `ray start --head` on 127.0.0.1 with its own temp dir, stopped by its own PIDs.

    `ray stop` would kill every Ray process of the user (including other clusters a test started), so
    teardown kills only processes whose command line names this cluster's temp dir.
    """

    def __init__(self, env: dict[str, str] | None = None, num_cpus: int = 4):
        import socket

        def free_port() -> int:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                return sock.getsockname()[1]

        self.port = free_port()
        self.dashboard_port = free_port()
        # Every port Ray would otherwise take from its fixed defaults (52365 for the dashboard agent...):
        # two clusters in one session must not race for them, or the second has no job agent.
        self.extra_ports = {
            flag: free_port()
            for flag in (
                "--ray-client-server-port",
                "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port",
                "--metrics-export-port",
                "--runtime-env-agent-port",
                "--node-manager-port",
                "--object-manager-port",
            )
        }
        # Ray's unix socket paths must stay short: use a short temp dir, not pytest's deep tmp_path.
        import tempfile

        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.num_cpus = num_cpus
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            **(env or {}),
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> RayHeadCluster:
        import subprocess
        import sys
        from pathlib import Path

        ray_bin = str(Path(sys.executable).parent / "ray")
        subprocess.run(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                *(f"{flag}={port}" for flag, port in self.extra_ports.items()),
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        return self

    def submit(self, entrypoint: list[str], *, timeout_s: float = 900):
        """`ray job submit -- <entrypoint>` from a client holding no AWS credentials.

        A head that has just started may answer "No available agent to submit job" until its job
        agent registers; that answer is retried for up to a minute.
        """
        import subprocess
        import sys
        import time
        from pathlib import Path

        ray_bin = str(Path(sys.executable).parent / "ray")
        env = {k: v for k, v in self.env.items() if not k.startswith("AWS_")}
        env["RAY_API_SERVER_ADDRESS"] = self.dashboard_url
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(
                [ray_bin, "job", "submit", "--", *entrypoint],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            if "No available agent" not in result.stdout + result.stderr or time.monotonic() > deadline:
                return result
            time.sleep(2)

    def stop(self) -> None:
        import shutil
        import signal
        import time

        import psutil

        def ours():
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    if any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                        yield proc
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue

        for proc in list(ours()):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and list(ours()):
            time.sleep(0.5)
        for proc in list(ours()):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """A running Ray head on 127.0.0.1 (dashboard + job server) that can reach the S3 server.

    The S3 credentials reach the cluster's processes through the standard AWS environment of
    `ray start`, the way a real cluster gets them from its nodes' environment. Module-scoped: while
    a head runs, Ray code that looks for "the" local cluster would find two.
    """
    cluster = RayHeadCluster(env=s3_server.env).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def fashion_vqgan(tmp_path_factory):
    """A tiny-f4 VQGAN (32 px images -> 8x8 codes) in our folder format."""
    from tokenizer import VQGAN, preset, save_vqgan

    torch.manual_seed(0)
    return save_vqgan(VQGAN(preset("tiny-f4")), tmp_path_factory.mktemp("vqgan") / "tiny-f4")


@pytest.fixture(scope="session")
def fashion_token_store(tmp_path_factory, fashion_mnist, fashion_vqgan):
    """A token store written by the Ray tokenization job from a 640-image Fashion-MNIST folder tree.

    Returns a dict: url, vqgan (folder), codebook_size, grid_size, num_classes.
    """
    from demo.example_data import balanced_subset, to_rgb, write_image_folder
    from jobs.tokenize import TokenizeOptions, run_tokenize
    from tokenizer import load_vqgan

    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=64, seed=1)
    root = tmp_path_factory.mktemp("fashion-store")
    folder = write_image_folder(to_rgb(images[index], size=32), labels[index], root / "images")
    url = str(root / "store")
    run_tokenize(
        TokenizeOptions(
            input=str(folder),
            output=url,
            tokenizer=str(fashion_vqgan),
            resolution=32,
            flip=True,
            shard_size=80,
            batch_size=80,
            num_cpus=2,
            progress=False,
        )
    )
    config = load_vqgan(fashion_vqgan).config
    return {
        "url": url,
        "vqgan": str(fashion_vqgan),
        "codebook_size": config.codebook_size,
        "grid_size": config.resolution // config.downsample_factor,
        "num_classes": 10,
    }
