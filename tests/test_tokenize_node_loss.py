"""`maskgit tokenize` on a 3-node Ray cluster on 127.0.0.1 that loses the node of a tokenizer actor.

The head has 0 CPUs (it runs only the job's driver); two worker nodes have 2 CPUs each; the job runs
2 tokenizer actors. After a few shards are committed, the worker node that hosts an actor is killed
(its raylet and every process of it, SIGKILL): the job must finish by itself, each image stored
exactly once. With 1-CPU actors the restarted actor takes the surviving node's last CPU, so no decode
task (1 CPU) could run beside it: the job drops an actor and goes on with the other (issue 22).

Its own module, not tests/test_tokenize_cluster.py: that module's `ray_head` fixture keeps another
head running, and the killed node must be one of this test's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RayHeadCluster
from ray_cluster import WorkerNode, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def three_nodes():
    """Head with 0 CPUs + two 2-CPU worker nodes, all on 127.0.0.1; every process stopped at the end."""
    # The job's processes import this checkout whatever the venv's install of it lists.
    with local_cluster({"PYTHONPATH": str(Path(__file__).resolve().parents[1])}) as (head, workers):
        yield head, workers


def _actor_nodes(head: RayHeadCluster) -> set[str]:
    """Node ids of the live TokenizeBatch actors (Ray's state API, through the head's dashboard)."""
    from ray.util.state import list_actors

    actors = list_actors(
        head.address, filters=[("class_name", "=", "TokenizeBatch"), ("state", "=", "ALIVE")]
    )
    return {actor.node_id for actor in actors}


def _node_id_of(worker: WorkerNode) -> str | None:
    import ray

    for node in ray.nodes():
        if node["Alive"] and node.get("NodeManagerPort") == worker.node_manager_port:
            return node["NodeID"]
    return None


@pytest.mark.parametrize("cpus_per_actor", ["0.5", "1"])
def test_tokenize_finishes_after_losing_the_node_of_an_actor(
    three_nodes, fashion_mnist_small, fashion_vqgan, tmp_path, cpus_per_actor
):
    import ray

    from demo.example_data import write_image_folder
    from pipeline.store import TokenStoreWriter, open_token_store

    head, workers = three_nodes
    images, labels = fashion_mnist_small
    folder = write_image_folder(images, labels, tmp_path / "images")
    output = str(tmp_path / "store")
    entrypoint = [
        "maskgit", "tokenize", "--input", str(folder), "--output", output, "--tokenizer", str(fashion_vqgan),
        "--resolution", "32", "--shard-size", "5", "--batch-size", "5",
        "--actors", "2", "--num-cpus-per-actor", cpus_per_actor, "--threads-per-actor", "1", "--no-progress",
    ]  # fmt: skip
    env = {**head.env, "RAY_API_SERVER_ADDRESS": head.dashboard_url}
    started = time.monotonic()
    log = tmp_path / "job.log"
    job = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--", *entrypoint],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        writer = TokenStoreWriter(output)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray.init(address=head.address, logging_level="ERROR", log_to_driver=False)
        try:
            deadline = time.monotonic() + 120
            while len(writer.committed_indices()) < 6:
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.5)
            hosts = _actor_nodes(head)
            victim = next(w for w in workers if _node_id_of(w) in hosts)
        finally:
            ray.shutdown()
        lost_at = len(writer.committed_indices())
        victim.kill()
        killed = time.monotonic()
        job.wait(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    text = log.read_text()
    print(f"node lost after {lost_at} commits; job ended {time.monotonic() - killed:.1f} s later, "
          f"{time.monotonic() - started:.1f} s in all")  # fmt: skip
    assert job.returncode == 0, text[-4000:]
    store = open_token_store(output)
    ids = [i for k in range(store.num_shards) for i in store.read_shard(k).image_ids]
    assert len(ids) == len(set(ids)) == len(images)  # each image exactly once
    assert store.manifest.num_samples == len(images)
