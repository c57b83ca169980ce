"""`ray job submit -- maskgit tokenize ...` against a real `ray start --head` cluster on 127.0.0.1.

S3 credentials reach the job only through the standard AWS environment of the cluster's processes
(never through the command line or the job's runtime env), and must not appear in the job's output.
The cluster runs in its own session and is stopped by that process group, never with `ray stop`
(which would kill every Ray of the user on a shared machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.example_inputs import write_webdataset_shards
from pipeline.images import to_model_input
from pipeline.store import open_token_store

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]
BIN = Path(sys.executable).parent


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """A `ray start --head` cluster whose processes carry the S3 server's AWS environment."""
    gcs, dashboard, client, agent, metrics, runtime_env = free_ports(6)
    temp_dir = tempfile.mkdtemp(prefix="mgray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {
        **os.environ,
        **s3_server.env,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--num-cpus=2",
        f"--port={gcs}",
        f"--temp-dir={temp_dir}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = starter.communicate(timeout=180)
    group = starter.pid  # every cluster process stays in the session `ray start` opened
    try:
        assert starter.returncode == 0, output.decode()[-3000:]
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_tokenizes_s3_tars_into_an_s3_store(
    ray_head, s3_server, fashion_mnist_small, tmp_path
):
    from tokenizer.checkpoint import save_vqgan
    from tokenizer.config import PRESETS
    from tokenizer.vqgan import VQGAN

    address, env = ray_head
    torch.manual_seed(0)
    model = VQGAN(PRESETS["tiny-f4"]).eval()
    tokenizer = save_vqgan(model, tmp_path / "vqgan")
    images, labels = fashion_mnist_small
    images, labels = images[:48], labels[:48]
    inputs, output = s3_server.url("cluster-job/tars"), s3_server.url("cluster-job/store")
    write_webdataset_shards(images, labels, inputs, per_shard=16, storage_options=s3_server.storage_options)
    submit = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--",
        "maskgit",
        "tokenize",
        "--input",
        inputs,
        "--output",
        output,
        "--tokenizer",
        str(tokenizer),
        "--resolution",
        "32",
        "--format",
        "zarr",
        "--flip",
        "--no-progress",
    ]
    client_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}  # the client needs no secrets
    result = subprocess.run(submit, env=client_env, capture_output=True, text=True, timeout=400)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "token store s3://" in text and "48 images in 3 shards" in text
    assert s3_server.secret_key not in text
    store = open_token_store(output, s3_server.storage_options)
    shards = [store.read_shard(i) for i in range(store.num_shards)]
    tokens = np.concatenate([s.tokens for s in shards])
    assert [i for s in shards for i in s.image_ids] == [f"shard-{k // 16:06d}.tar/{k:06d}" for k in range(48)]
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), labels)
    with torch.no_grad():
        direct = model.encode_to_indices(to_model_input(images)).numpy()
    np.testing.assert_array_equal(tokens[:, 0], direct)
    assert store.manifest.class_names == tuple(str(i) for i in range(int(labels.max()) + 1))
