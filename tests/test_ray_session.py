"""A Ray that our commands start locally (jobs/ray_session.py) listens on 127.0.0.1 only.

Run in a fresh process the way a CLI command runs: `ray` imported first, and without the loopback
setting in the environment (the suite's conftest sets it for every test process; a user's shell does
not), so the test sees what `connect_ray` itself arranges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]

# Starts a local Ray through connect_ray (with the dashboard, as `train` does), runs a task and an
# actor so worker processes exist, then prints every listening socket of the process tree.
_PROBE = """
import json, time
import ray
import psutil
from jobs.ray_session import connect_ray

assert connect_ray(num_cpus=1, dashboard=True)
ray.get(ray.remote(num_cpus=0)(lambda: 1).remote())
actor = ray.remote(num_cpus=0)(type("Probe", (), {"ping": lambda self: 1})).remote()
ray.get(actor.ping.remote())
time.sleep(1)  # agents finish opening their ports
driver = psutil.Process()
listening = []
for proc in [driver, *driver.children(recursive=True)]:
    try:
        listening += [
            [proc.name(), conn.laddr.ip, conn.laddr.port]
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
    except psutil.Error:
        pass
print("LISTENING " + json.dumps(listening))
ray.shutdown()
"""

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def test_a_locally_started_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("LISTENING "))
    listening = json.loads(line.removeprefix("LISTENING "))
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the servers were seen at all
    assert not [s for s in listening if s[1] in ("0.0.0.0", "::")], listening  # no wildcard listener
    assert not [s for s in listening if s[1] not in LOOPBACK], listening  # nor a public address
