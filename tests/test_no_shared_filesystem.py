"""The commands on a Ray cluster whose worker nodes share no filesystem with the driver (issue 23).

A 3-node cluster on 127.0.0.1 (tests/ray_cluster.py): the head (0 CPUs: it runs the jobs' drivers)
sees this machine as it is; each of the two 2-CPU worker nodes runs in its own mount namespace with
the pytest temp dir (every input, model and store a test or fixture wrote) covered by an empty tmpfs.
Data and models live only on the S3 server, credentials only in the cluster's AWS environment. With
s3:// paths, `tokenize`, `train` (2 workers, ZeRO, the tokenizer read from S3 by each worker for its
sample grid), `export`, `fid-stats`, `evaluate` and `sample` all work; a path only the driver sees,
given where a worker must read it (`tokenize --input`, `train --tokenizer`), fails within seconds with
the CLI's one-line error naming the flag and the path, and nothing is reported as success.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
FAILS_WITHIN_S = 60  # `ray job submit` start-up, the driver's imports and its checks; no worker work


def _run_jobs(head, entrypoints: dict[str, list[str]]) -> dict[str, tuple[int, str, float]]:
    """`ray job submit -- <entrypoint>` for each, all at once, from a client without AWS credentials
    (the cluster has them); {name: (return code, output, seconds)} once every job has ended."""
    from concurrent.futures import ThreadPoolExecutor

    def run(entrypoint: list[str]) -> tuple[int, str, float]:
        started = time.monotonic()
        result = head.submit(entrypoint, timeout_s=600)  # waits for the job agent of a fresh head
        return result.returncode, result.stdout + result.stderr, time.monotonic() - started

    with ThreadPoolExecutor(len(entrypoints)) as pool:
        futures = {name: pool.submit(run, entrypoint) for name, entrypoint in entrypoints.items()}
        return {name: future.result() for name, future in futures.items()}


def _assert_fails_in_one_line(result: tuple[int, str, float], expected: str) -> None:
    code, output, seconds = result
    assert code != 0 and seconds < FAILS_WITHIN_S, (seconds, output[-3000:])
    assert expected in output, output[-3000:]
    assert "Traceback" not in output and "WorkerGroupError" not in output


def test_s3_paths_work_and_driver_only_paths_fail_fast(
    s3_server, fashion_mnist_small, fashion_vqgan, tmp_path_factory, tmp_path
):
    import fsspec

    from demo.example_data import write_image_folder
    from pipeline.store import open_token_store
    from tokenizer import load_vqgan

    if os.geteuid() != 0:
        pytest.skip("a mount namespace per worker node needs root (unshare --mount)")
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    url = {
        name: s3_server.url("no-shared-fs", name)
        for name in (
            "images",
            "vqgan",
            "store",
            "bad-store",
            "run",
            "bad-run",
            "stats.npz",
            "export",
            "grid.png",
            "eval",
        )
    }
    images, labels = fashion_mnist_small
    folder = write_image_folder(images[:40], labels[:40], tmp_path / "images")  # only the driver sees it
    fs.put(f"{folder}/", url["images"][len("s3://") :] + "/", recursive=True)
    fs.put(f"{fashion_vqgan}/", url["vqgan"][len("s3://") :] + "/", recursive=True)
    config = load_vqgan(fashion_vqgan).config
    tokenize = [
        "maskgit", "tokenize", "--tokenizer", url["vqgan"], "--resolution", "32", "--shard-size", "10",
        "--batch-size", "10", "--actors", "2", "--threads-per-actor", "1", "--no-progress",
    ]  # fmt: skip
    train = [
        "maskgit", "train", "--store", url["store"], "--preset", "tiny", "--depth", "1",
        "--codebook-size", str(config.codebook_size),
        "--grid-size", str(config.resolution // config.downsample_factor),
        "--num-classes", "10", "--workers", "2", "--global-batch-size", "16", "--micro-batch-size", "8",
        "--steps", "2", "--checkpoint-every", "2", "--log-every", "1", "--sample-steps", "2",
    ]  # fmt: skip
    models = ["--transformer", f"{url['run']}/export", "--tokenizer", url["vqgan"], "--steps", "2"]
    env = {
        **s3_server.env,
        "PYTHONPATH": str(ROOT),  # the jobs' processes import this checkout
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    seconds = {}
    started = time.monotonic()
    with local_cluster(env, hide=[str(tmp_path_factory.getbasetemp())]) as (head, _workers):
        seconds["cluster"] = time.monotonic() - started
        first = _run_jobs(
            head,
            {
                "bad tokenize": [*tokenize, "--input", str(folder), "--output", url["bad-store"]],
                "tokenize": [*tokenize, "--input", url["images"], "--output", url["store"]],
                "fid-stats": ["maskgit", "fid-stats", "--source", url["images"], "--out", url["stats.npz"],
                              "--resolution", "32", "--no-progress"],
            },
        )  # fmt: skip
        second = _run_jobs(
            head,
            {
                "bad train": [*train, "--out", url["bad-run"], "--tokenizer", str(fashion_vqgan)],
                "train": [*train, "--out", url["run"], "--tokenizer", url["vqgan"]],
            },
        )
        third = _run_jobs(
            head,
            {
                "export": ["maskgit", "export", f"{url['run']}/checkpoints", url["export"]],
                "sample": ["maskgit", "sample", *models, "--out", url["grid.png"], "--classes", "0", "1",
                           "--per-class", "2"],
                "evaluate": ["maskgit", "evaluate", *models, "--out", url["eval"], "--reference-stats",
                             url["stats.npz"], "--per-class", "3", "--classes", "0", "1", "--shard-size", "3",
                             "--batch-size", "3", "--workers", "2", "--threads-per-worker", "1",
                             "--fid-method", "eigh", "--is-splits", "1", "--no-progress"],
            },
        )  # fmt: skip
        stopping = time.monotonic()
    seconds["stop"] = time.monotonic() - stopping
    results = {**first, **second, **third}
    seconds.update({name: round(result[2], 1) for name, result in results.items()})
    print(f"seconds: {seconds}")

    # A path only the driver sees, where the workers must read it: one line naming flag, path and node.
    _assert_fails_in_one_line(
        results["bad tokenize"],
        f"maskgit tokenize: error: --input {folder}: only the driver's node has it, node 127.0.0.1",
    )
    assert "token store" not in results["bad tokenize"][1]
    assert not fs.exists(url["bad-store"][len("s3://") :])  # nothing written, nothing committed
    _assert_fails_in_one_line(
        results["bad train"],
        f"maskgit train: error: --tokenizer {fashion_vqgan}: only the driver's node has it, node 127.0.0.1",
    )
    assert "trained" not in results["bad train"][1] and not fs.exists(url["bad-run"][len("s3://") :])
    # The same commands with s3:// paths work.
    for name in ("tokenize", "fid-stats", "train", "export", "sample", "evaluate"):
        assert results[name][0] == 0, (name, results[name][1][-3000:])
    assert "40 images in 4 shards" in results["tokenize"][1]
    assert open_token_store(url["store"], s3_server.storage_options).manifest.num_samples == 40
    assert "trained 2 steps" in results["train"][1]
    for written in (f"{url['export']}/model.safetensors", url["grid.png"], f"{url['eval']}/report.json"):
        assert fs.exists(written[len("s3://") :]), written
