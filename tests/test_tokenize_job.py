"""The `maskgit tokenize` Ray job on real Fashion-MNIST: every input kind, local and S3, both store
formats; bad files; settings mismatch; a SIGKILL mid-run followed by a rerun (exactly once, identical)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.example_data import write_image_folder
from demo.example_inputs import (
    BAD_IMAGE_KINDS,
    bad_image_bytes,
    write_parquet_files,
    write_webdataset_shards,
)
from pipeline.images import to_model_input
from pipeline.store import StoreSettingsError, open_token_store

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (start-up costs ~5-10 s on 2 cores); fractional CPUs per actor."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from tokenizer.checkpoint import save_vqgan
    from tokenizer.config import PRESETS
    from tokenizer.vqgan import VQGAN

    torch.manual_seed(0)
    model = VQGAN(PRESETS["tiny-f4"]).eval()
    return model, str(save_vqgan(model, tmp_path_factory.mktemp("vqgan") / "tiny"))


def options(**changes):
    from jobs.tokenize import TokenizeOptions

    base = {"resolution": 32, "shard_size": 16, "batch_size": 16, "progress": False, "threads_per_actor": 1}
    return TokenizeOptions(**{**base, **changes})


def read_store(url, storage_options=None):
    store = open_token_store(url, storage_options)
    shards = [store.read_shard(i) for i in range(store.num_shards)]  # verifies every checksum
    tokens = np.concatenate([s.tokens for s in shards])
    labels = np.concatenate([s.labels for s in shards])
    ids = [i for s in shards for i in s.image_ids]
    return store, tokens, labels, ids


def direct_tokens(model, images):
    with torch.no_grad():
        return model.encode_to_indices(to_model_input(images)).numpy()


def write_input(kind, images, labels, url, storage_options, scratch):
    if kind == "folder":
        write_image_folder(images, labels, scratch / "tree")
        if storage_options is None:
            (scratch / "tree").rename(url)
        else:  # upload the same tree to S3
            import fsspec

            fsspec.filesystem("s3", **storage_options).put(f"{scratch}/tree/", url + "/", recursive=True)
    elif kind == "webdataset":
        write_webdataset_shards(images, labels, url, per_shard=30, storage_options=storage_options)
    else:
        write_parquet_files(
            images, labels, url, per_file=40, row_group_size=16, storage_options=storage_options
        )


def original_index(kind: str, image_id: str) -> int:
    """Where an image id came from in the written input (all writers name images by their index)."""
    name = image_id.split("/")[-1]
    return int(name.split(".")[0])


CASES = [  # (input kind, input on S3, store on S3, store format, flip)
    ("folder", False, False, "arrow", True),
    ("folder", True, True, "zarr", False),
    ("webdataset", False, True, "arrow", False),
    ("webdataset", True, False, "zarr", True),
    ("parquet", True, True, "arrow", True),
    ("parquet", False, False, "zarr", False),
]


@pytest.mark.s3
@pytest.mark.parametrize(("kind", "input_s3", "store_s3", "store_format", "flip"), CASES)
def test_job_tokenizes_every_input_kind(
    kind,
    input_s3,
    store_s3,
    store_format,
    flip,
    ray_cluster,
    tiny_tokenizer,
    s3_server,
    fashion_mnist_small,
    tmp_path,
):
    from jobs.tokenize import run_tokenize

    model, tokenizer = tiny_tokenizer
    images, labels = fashion_mnist_small
    images, labels = images[:90], labels[:90]
    name = f"{kind}-{input_s3}-{store_s3}-{store_format}"
    so = s3_server.storage_options
    input_url = s3_server.url("job-inputs", name) if input_s3 else str(tmp_path / "input")
    output = s3_server.url("job-stores", name) if store_s3 else str(tmp_path / "store")
    if not input_s3 and kind != "folder":
        (tmp_path / "input").mkdir()
    write_input(kind, images, labels, input_url, so if input_s3 else None, tmp_path)
    any_s3 = input_s3 or store_s3
    summary = run_tokenize(
        options(
            input=input_url,
            output=output,
            tokenizer=tokenizer,
            store_format=store_format,
            flip=flip,
            storage_options=so if any_s3 else None,
        )
    )
    assert summary.images == 90 and summary.rejects == 0 and summary.shards_written == summary.shards
    assert summary.devices == ("cpu",)  # the actors report where they encoded (CUDA: tests/test_gpu.py)
    store, tokens, got_labels, ids = read_store(output, so if store_s3 else None)
    order = [original_index(kind, i) for i in ids]
    assert sorted(order) == list(range(90))  # every image exactly once
    np.testing.assert_array_equal(got_labels, labels[order])
    assert tokens.shape == (90, 2 if flip else 1, 8, 8) and tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens[:, 0], direct_tokens(model, images[order]))
    if flip:
        np.testing.assert_array_equal(tokens[:, 1], direct_tokens(model, images[order][:, :, ::-1].copy()))
    manifest = store.manifest
    assert manifest.store_format == store_format and manifest.codebook_size == 256 and manifest.grid == (8, 8)
    assert manifest.views == (("original", "hflip") if flip else ("original",))
    assert manifest.tokenizer["config"] == model.config.to_dict()
    weights = Path(tokenizer, "model.safetensors").read_bytes()
    assert manifest.tokenizer["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert len(manifest.class_names) == 10 and manifest.num_samples == 90 and manifest.rejects is None
    # 16 images per shard: 90 files; tars of 30 images; Parquet files of 40 + 40 + 10 rows.
    expected_shards = {"folder": 6, "webdataset": 3, "parquet": 7}[kind]
    assert len(manifest.shards) == expected_shards
    assert manifest.settings["resolution"] == 32 and manifest.sources[0].startswith(
        "s3://" if input_s3 else "file"
    )


def test_rerun_skips_and_other_settings_fail(ray_cluster, tiny_tokenizer, fashion_mnist_small, tmp_path):
    from jobs.tokenize import run_tokenize

    _, tokenizer = tiny_tokenizer
    images, labels = fashion_mnist_small
    write_image_folder(images[:40], labels[:40], tmp_path / "in")
    opts = options(input=str(tmp_path / "in"), output=str(tmp_path / "store"), tokenizer=tokenizer)
    first = run_tokenize(opts)
    manifest_bytes = (tmp_path / "store" / "manifest.json").read_bytes()
    again = run_tokenize(opts)
    assert again.shards_written == 0 and again.shards_skipped == first.shards == 3
    assert (tmp_path / "store" / "manifest.json").read_bytes() == manifest_bytes
    with pytest.raises(StoreSettingsError, match=r"resolution=32 \(this run asks for 64\)"):
        run_tokenize(options(**{**opts.__dict__, "resolution": 64}))
    with pytest.raises(StoreSettingsError, match="store_format"):
        run_tokenize(options(**{**opts.__dict__, "store_format": "zarr"}))
    write_image_folder(images[40:41], labels[40:41], tmp_path / "in")  # the input changed
    with pytest.raises(StoreSettingsError, match="listing_sha256"):
        run_tokenize(opts)


def test_bad_files_are_rejected_and_good_images_all_present(
    ray_cluster, tiny_tokenizer, fashion_mnist_small, tmp_path
):
    from jobs.tokenize import run_tokenize

    _, tokenizer = tiny_tokenizer
    images, labels = fashion_mnist_small
    root = write_image_folder(images[:30], labels[:30], tmp_path / "in")
    class_dir = sorted(p for p in root.iterdir() if p.is_dir())[0]
    for kind, data in bad_image_bytes(images[0]).items():
        (class_dir / f"bad-{BAD_IMAGE_KINDS[kind][0]}").write_bytes(data)
    summary = run_tokenize(
        options(input=str(root), output=str(tmp_path / "store"), tokenizer=tokenizer, shard_size=7)
    )
    store, tokens, _, ids = read_store(str(tmp_path / "store"))
    kept = {f"bad-{name}" for name, keep in BAD_IMAGE_KINDS.values() if keep}
    rejected = {f"bad-{name}" for name, keep in BAD_IMAGE_KINDS.values() if not keep}
    assert {i.split("/")[-1] for i in ids} == {f"{i:06d}.png" for i in range(30)} | kept
    rejects = store.read_rejects()
    assert store.manifest.rejects == "rejects.jsonl" and summary.rejects == len(rejects) == len(rejected)
    assert {r["image_id"].split("/")[-1] for r in rejects} == rejected
    assert all(r["reason"] and r["source"].startswith("file://") for r in rejects)
    assert len(tokens) == 30 + len(kept) == summary.images


def test_an_input_of_which_no_file_became_an_image_commits_no_manifest(ray_cluster, tiny_tokenizer, tmp_path):
    from jobs.tokenize import run_tokenize

    _, tokenizer = tiny_tokenizer
    for name in ("a", "b"):
        (tmp_path / "in" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "in" / name / f"{i}.png").write_bytes(b"not an image")
    opts = options(input=str(tmp_path / "in"), output=str(tmp_path / "store"), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"--input .*/in: none of its 6 inputs became an image \(6 "):
        run_tokenize(opts)
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_an_input_the_workers_do_not_see_fails_naming_flag_path_and_node(
    ray_cluster, tiny_tokenizer, fashion_mnist_small, tmp_path, monkeypatch
):
    """The decode tasks find none of the files the driver listed (here: removed right after planning,
    which is what a worker on a node without the driver's disk finds): the job fails within seconds
    with the flag, the path and the node, not with a store of 0 images and every file a reject.
    tests/test_no_shared_filesystem.py has the real thing (nodes in their own mount namespaces)."""
    import shutil

    import jobs.tokenize as job

    _, tokenizer = tiny_tokenizer
    images, labels = fashion_mnist_small
    root = write_image_folder(images[:12], labels[:12], tmp_path / "in")
    monkeypatch.setattr(job, "_check_worker_paths", lambda options, plan: shutil.rmtree(root))
    started = time.monotonic()
    pattern = (
        rf"--input {root}: the driver listed 6 files for shard \d but a worker on node 127\.0\.0\.1 \(\w+\) "
        r"sees none of them; put the input where every node can read it"
    )
    with pytest.raises(FileNotFoundError, match=pattern):
        job.run_tokenize(
            options(input=str(root), output=str(tmp_path / "store"), tokenizer=tokenizer, shard_size=6)
        )
    assert time.monotonic() - started < 60
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_worker_path_check_names_the_flag_the_path_and_the_node(ray_cluster, tmp_path, monkeypatch):
    """jobs.node_paths on this one node, checked as if it were another node of the cluster."""
    import ray

    from jobs import node_paths
    from jobs.node_paths import WorkerPath, check_worker_paths

    check_worker_paths([WorkerPath("--store", str(tmp_path / "gone"))])  # no other node: nothing checked
    here = ray.get_runtime_context().get_node_id()
    monkeypatch.setattr(node_paths, "_other_nodes", lambda: [{"NodeID": here}])
    (tmp_path / "model").mkdir()
    check_worker_paths(
        [
            WorkerPath("--tokenizer", str(tmp_path / "model")),
            WorkerPath("--out", str(tmp_path / "run"), writes=True),
            WorkerPath("--store", "s3://bucket/store"),  # the same object on every node: not checked
            WorkerPath("--checkpoint-dir", None, writes=True),
        ]
    )
    assert list((tmp_path / "run").iterdir()) == []  # the probe is gone
    pattern = rf"--store {tmp_path}/gone: only the driver's node has it, node 127\.0\.0\.1 \(\w+\) of the Ray"
    with pytest.raises(FileNotFoundError, match=pattern):
        check_worker_paths(
            [
                WorkerPath("--tokenizer", str(tmp_path / "model")),
                WorkerPath("--store", str(tmp_path / "gone")),
            ]
        )


def cli_command(input_dir, output, tokenizer, address):
    flags = "--resolution 32 --shard-size 6 --batch-size 2 --flip --format zarr --threads-per-actor 1"
    flags += " --no-progress"
    return [
        *(sys.executable, "-m", "jobs.cli", "tokenize", "--input", str(input_dir), "--output", str(output)),
        *("--tokenizer", tokenizer, "--ray-address", address, *flags.split()),
    ]


def test_sigkill_mid_run_then_rerun_gives_each_image_exactly_once(
    ray_cluster, tiny_tokenizer, fashion_mnist_small, tmp_path
):
    from jobs.tokenize import run_tokenize

    _, tokenizer = tiny_tokenizer
    images, labels = fashion_mnist_small
    root = write_image_folder(images, labels, tmp_path / "in")  # 200 images -> 34 shards of <= 6
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        cli_command(root, killed, tokenizer, ray_cluster),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if len(list((killed / "_commits").glob("*.json"))) >= 3:
                break
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    committed = len(list((killed / "_commits").glob("*.json")))
    assert 3 <= committed < 34 and not (killed / "manifest.json").exists()  # really killed mid-run
    with pytest.raises(Exception, match="incomplete"):
        open_token_store(str(killed))
    resumed = subprocess.run(
        cli_command(root, killed, tokenizer, ray_cluster), cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert "already committed" in resumed.stdout.decode()
    store, tokens, _, ids = read_store(str(killed))
    assert sorted(original_index("folder", i) for i in ids) == list(range(200))  # each image exactly once
    # An uninterrupted run (in-process, same settings) gives the identical store.
    clean = tmp_path / "clean"
    run_tokenize(
        options(
            input=str(root),
            output=str(clean),
            tokenizer=tokenizer,
            shard_size=6,
            batch_size=8,
            flip=True,
            store_format="zarr",
        )
    )
    assert json.loads((clean / "manifest.json").read_text()) == json.loads(
        (killed / "manifest.json").read_text()
    )
    for shard in store.manifest.shards:
        assert (clean / shard.path).read_bytes() == (killed / shard.path).read_bytes()
    np.testing.assert_array_equal(read_store(str(clean))[1], tokens)
