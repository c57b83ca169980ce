"""Running the service: a failing decode step, offline /docs, the bind warning, and `maskgit serve` as
systemd or Kubernetes run it (loopback-only Ray, quiet client disconnects, SIGTERM stops everything).

The first tests serve the ingress's FastAPI app in this process (uvicorn, no Ray); the last starts
`maskgit serve` as a subprocess with its own local Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import requests
from serve_helpers import free_port, local_app, sse_events, train_tiny_models

from jobs.serve.app import bind_warning
from jobs.serve.continuous import ContinuousSampler
from jobs.serve.engine import SamplerEngine
from jobs.serve.ingress import build_http_app
from jobs.serve.schema import ServeOptions
from transformer.decode import DecodeRows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, fashion_mnist_small):
    images, labels = fashion_mnist_small
    trained = train_tiny_models(tmp_path_factory.mktemp("operations"), images, labels, steps=30)
    engine = SamplerEngine(trained.transformer, trained.tokenizer, name="tiny", device="cpu")
    options = ServeOptions(transformer=trained.transformer, tokenizer=trained.tokenizer, model_name="tiny",
                           max_batch_images=8, max_images_per_request=4, max_steps=8)  # fmt: skip
    return SimpleNamespace(trained=trained, engine=engine, options=options)


@pytest.fixture(scope="module")
def url(models):
    sampler = ContinuousSampler(models.engine, max_rows=16)
    info = {**models.engine.info(), "batching": "continuous"}
    with local_app(build_http_app(sampler, info, models.options)) as base:
        yield base




def test_a_failing_step_fails_its_requests_and_the_loop_keeps_serving(url, monkeypatch, caplog):
    # The batcher's admit step joins the waiting requests' rows to the running ones; make that fail once.
    concat, calls = DecodeRows.concat, []

    def broken_once(parts):
        calls.append(len(parts))
        if len(calls) == 1:
            raise RuntimeError("injected: rows could not be joined")
        return concat(parts)

    monkeypatch.setattr(DecodeRows, "concat", staticmethod(broken_once))
    body = {"class_id": 3, "count": 2, "seed": 1, "steps": 2, "stream": True}
    streamed = requests.post(f"{url}/v1/generate", json=body, timeout=120)
    assert streamed.status_code == 200
    assert sse_events(streamed) == [
        ("error", {"error": "the sampler failed; see the server log", "details": [], "status": 500})
    ]
    after = requests.post(f"{url}/v1/generate", json={**body, "stream": False}, timeout=120)
    assert after.status_code == 200, after.text
    assert len(after.json()["images"]) == 2 and len(calls) >= 2
    assert "admitting requests to a decoding step failed" in caplog.text


def test_docs_work_offline(url):
    page = requests.get(f"{url}/docs", timeout=30)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page.text)
    assets = [a or b for a, b in assets]
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"/docs loads {asset} from elsewhere"
        assert requests.get(f"{url}{asset}", timeout=30).status_code == 200, asset
    assert '"validatorUrl": null' in page.text  # Swagger UI's online validator badge stays off


def test_bind_warning():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert bind_warning(host, keyed=False) is None
    assert "no API key" in bind_warning("0.0.0.0", keyed=False)
    assert "no API key" in bind_warning("my-host.example", keyed=False)
    assert bind_warning("0.0.0.0", keyed=True) is None


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


@pytest.mark.ray
@pytest.mark.slow
def test_maskgit_serve_local_ray_disconnects_and_sigterm(models, tmp_path):
    """`maskgit serve` with its own Ray: every socket it listens on is on 127.0.0.1, clients that go
    away are logged without ERROR, and SIGTERM stops every process it started within seconds."""
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # `maskgit serve` must keep Ray local on its own
    command = [
        sys.executable, "-m", "jobs.cli", "serve", "--transformer", models.trained.transformer,
        "--tokenizer", models.trained.tokenizer, "--port", str(port), "--num-cpus", "1", "--max-steps", "8",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/v1/health", timeout=10).status_code == 200:
                    break
            time.sleep(2)
        assert process.poll() is None and requests.get(f"{base}/v1/health", timeout=10).ok, log.read_text()
        started = _tree(process.pid)
        listening = {
            (proc.name(), conn.laddr.ip)
            for proc in started
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        assert listening
        public = {(name, ip) for name, ip in listening if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
        # Known, not ours to change: each Serve replica starts its inter-deployment gRPC server on
        # "[::]:0", hard-coded in Ray 2.60 (ray/serve/_private/replica.py, `_on_initialized`). Every
        # Ray process (GCS, raylet, agents, workers) and the HTTP proxy are on loopback.
        replicas = {(name, ip) for name, ip in public if name.startswith("ray::ServeReplica") and ip == "::"}
        assert not public - replicas, f"listening beyond loopback: {public - replicas}"

        body = {"class_id": 1, "count": 4, "steps": 8}
        for index in range(9):  # clients that go away: mid-stream, or before a plain answer
            if index % 2:
                with requests.post(f"{base}/v1/generate", json={**body, "stream": True}, stream=True,
                                   timeout=60) as reply:  # fmt: skip
                    next(reply.iter_lines())
            else:
                with contextlib.suppress(requests.Timeout):
                    requests.post(f"{base}/v1/generate", json=body, timeout=(10, 0.05))
        time.sleep(3)
        assert requests.post(f"{base}/v1/generate", json={"class_id": 2}, timeout=120).status_code == 200
        time.sleep(2)  # worker log lines reach the driver's output
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, text[-4000:]

        begin = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=max(1.0, 20 - (time.monotonic() - begin)))
        assert not alive, f"left running after SIGTERM: {[(p.pid, p.name()) for p in alive]}"
        print(f"SIGTERM to everything stopped: {time.monotonic() - begin:.1f} s")
    finally:
        if process.poll() is None:
            process.kill()
        for proc in _tree(process.pid)[1:] + started:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
