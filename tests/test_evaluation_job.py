"""`maskgit evaluate` on 2 local Ray workers (CPU, tiny random models, real Fashion-MNIST reference):
killed mid-run with SIGKILL, rerun, no shard sampled twice, report + grid; settings mismatches fail."""

from __future__ import annotations

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
from PIL import Image

from jobs.cli import main

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
PER_CLASS, SHARD_SIZE, NUM_SHARDS = 3, 3, 10  # 10 classes x 3 samples, one shard per class


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module; the job's subprocesses join it with --ray-address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Randomly initialised tiny VQGAN (32 px -> 8x8 codes) and tiny transformer in our folder formats."""
    from tokenizer import VQGAN, preset, save_vqgan
    from transformer import PRESETS, MaskTransformer, SamplingConfig, save_transformer

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vqgan = save_vqgan(VQGAN(preset("tiny-f4")), root / "vqgan")
    sampling = SamplingConfig(steps=4, gumbel_temperature=2.0, cfg_weight=1.0)
    transformer = save_transformer(MaskTransformer(PRESETS["tiny"]), root / "transformer", sampling=sampling)
    return str(transformer), str(vqgan)


@pytest.fixture(scope="module")
def reference_stats(tmp_path_factory, fashion_mnist_small):
    """EfficientNet-Lite0 statistics of 40 real Fashion-MNIST images, made by `maskgit fid-stats`."""
    from demo.example_data import write_image_folder

    root = tmp_path_factory.mktemp("reference")
    images, labels = fashion_mnist_small
    folder = write_image_folder(images[:40], labels[:40], root / "images")
    out = root / "fashion32.npz"
    assert (
        main(["fid-stats", "--source", str(folder), "--out", str(out), "--resolution", "32", "--no-progress"])
        == 0
    )
    return str(out)


def command(models, reference, out, ray_address, *extra):
    transformer, tokenizer = models
    return [
        sys.executable, "-m", "jobs.cli", "evaluate", "--transformer", transformer, "--tokenizer", tokenizer,
        "--out", str(out), "--reference-stats", reference, "--per-class", str(PER_CLASS),
        "--shard-size", str(SHARD_SIZE), "--batch-size", "3", "--workers", "2", "--threads-per-worker", "1",
        "--fid-method", "eigh", "--is-splits", "3", "--ray-address", ray_address, "--no-progress", *extra,
    ]  # fmt: skip


def committed(out: Path) -> list[int]:
    return sorted(int(p.stem[6:]) for p in (out / "samples").glob("shard-*.json"))


def test_killed_and_rerun_job_samples_every_shard_once_and_reports(
    ray_cluster, tiny_models, reference_stats, fashion_mnist_small, tmp_path
):
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command(tiny_models, reference_stats, out, ray_cluster),
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and len(committed(out)) < 2:
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    time.sleep(2)  # let the orphaned actors notice their owner is gone
    before = committed(out)
    assert 2 <= len(before) < NUM_SHARDS and not (out / "report.json").exists()  # really killed mid-run
    first_run_attempts = [json.loads(p.read_text()) for p in (out / "attempts").glob("*.json")]

    resumed = subprocess.run(
        command(tiny_models, reference_stats, out, ray_cluster),
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert f"{len(before)} already committed" in resumed.stdout.decode()
    assert committed(out) == list(range(NUM_SHARDS))

    attempts = [json.loads(p.read_text()) for p in (out / "attempts").glob("*.json")]
    second_run = [a for a in attempts if a not in first_run_attempts]
    assert {a["run"] for a in second_run} and not {a["run"] for a in second_run} & {
        a["run"] for a in first_run_attempts
    }
    assert not {a["shard"] for a in second_run} & set(before)  # committed shards were never sampled again
    assert sorted(a["shard"] for a in second_run) == sorted(set(range(NUM_SHARDS)) - set(before))

    # Every sample exactly once, with its planned class and seed; the commit names the attempt that made it.
    import fsspec

    from evaluation.sample_store import SampleStore

    store = SampleStore(fsspec.filesystem("file"), str(out))
    shards = [store.read_samples(i) for i in range(NUM_SHARDS)]
    np.testing.assert_array_equal(np.concatenate([s.indices for s in shards]), np.arange(30))
    np.testing.assert_array_equal(np.concatenate([s.seeds for s in shards]), np.arange(30))
    np.testing.assert_array_equal(np.concatenate([s.class_ids for s in shards]), np.repeat(np.arange(10), 3))
    winners = {(a["shard"], a["attempt"]) for a in attempts}
    assert all((i, store.sample_commit(i)["attempt"]) in winners for i in range(NUM_SHARDS))

    # A resampled shard equals direct sampling with the same seeds (so resumption cannot change results).
    from pipeline.images import to_uint8_images
    from tokenizer import load_vqgan
    from transformer import load_sampling_config, load_transformer, sample

    redone = max(set(range(NUM_SHARDS)) - set(before))
    model, vqgan = load_transformer(tiny_models[0]), load_vqgan(tiny_models[1])
    kwargs = load_sampling_config(tiny_models[0]).as_kwargs()
    with torch.no_grad():
        tokens = sample(
            model, torch.full((3,), redone), seeds=[3 * redone + j for j in range(3)], **kwargs
        ).tokens
        np.testing.assert_array_equal(
            to_uint8_images(vqgan.decode_from_indices(tokens)), shards[redone].images
        )

    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 30 and report["evaluator"]["name"] == "efficientnet-lite0"
    assert report["sampling"]["steps"] == 4 and report["sampling"]["cfg_weight"] == 1.0
    assert report["protocol"]["is_splits"] == 3 and report["protocol"]["fid_method"] == "eigh"
    labelled = report["labelled_metrics"]
    assert labelled["FID-EffLite0 (not comparable with published FID)"] > 0  # random models vs real images
    assert labelled["IS-EffLite0 (not comparable with published IS)"] >= 1.0
    assert all(0.0 <= report[k] <= 1.0 for k in ("precision", "recall", "coverage"))
    markdown = (out / "report.md").read_text()
    assert "FID-EffLite0 (not comparable with published FID)" in markdown
    assert "steps=4" in markdown and "cfg_weight=1.0" in markdown and "gumbel_temperature=2.0" in markdown
    grid = Image.open(out / "samples.png")
    assert grid.size == (3 * (32 + 2) + 2, 10 * (32 + 2) + 2)  # 3 per class, 10 classes

    # A third run samples nothing, gives the same numbers, and can add the classifier check.
    from evaluation.classifier import PRESETS, save_classifier, train_classifier

    images, labels = fashion_mnist_small
    classifier = train_classifier(images, labels, config=PRESETS["tiny"], epochs=1, progress=False)
    save_classifier(classifier, tmp_path / "classifier")
    third = subprocess.run(
        command(tiny_models, reference_stats, out, ray_cluster, "--classifier", str(tmp_path / "classifier")),
        cwd=ROOT, env=env, capture_output=True, timeout=600,
    )  # fmt: skip
    assert third.returncode == 0, third.stderr.decode()[-3000:]
    assert "0 to sample, 0 to featurise" in third.stdout.decode()
    again = json.loads((out / "report.json").read_text())
    assert again["labelled_metrics"] == report["labelled_metrics"]
    assert 0.0 <= float(again["extra"]["classifier accuracy (samples show their class)"]) <= 1.0
    assert len(list((out / "attempts").glob("*.json"))) == len(attempts)


def test_settings_mismatches_fail_before_sampling(
    ray_cluster, tiny_models, reference_stats, tmp_path, capsys
):
    out = tmp_path / "eval"
    (out).mkdir()
    (out / "plan.json").write_text(json.dumps({"seed": 99}))
    args = command(tiny_models, reference_stats, out, ray_cluster)[3:]
    assert main(args) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args[:-1], "--minmax-stretch", "--no-progress"]) == 2
    assert "minmax_stretch=False" in capsys.readouterr().err
    assert main([*args, "--evaluator", "inception", "--inception-weights", str(tmp_path / "w.pth")]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    assert not (out / "samples").exists()


@pytest.mark.s3
def test_job_reads_and_writes_s3(ray_cluster, tiny_models, reference_stats, s3_server):
    import fsspec

    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    reference = s3_server.url("evaluate/reference.npz")
    fs.put(reference_stats, reference)
    out = s3_server.url("evaluate/run")
    remote_models = []
    for name, folder in zip(("transformer", "tokenizer"), tiny_models):
        remote_models.append(s3_server.url("evaluate", name))
        fs.put(folder + "/", remote_models[-1].removeprefix("s3://"), recursive=True)
    # Both models, the reference statistics and the output on S3: the workers read the models there.
    args = command(remote_models, reference, out, ray_cluster, "--classes", "2", "7")[3:]
    assert main([*args, "--storage-options", json.dumps(s3_server.storage_options)]) == 0
    root = out.removeprefix("s3://")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/samples")) == [
        "shard-000000.json", "shard-000000.npz", "shard-000001.json", "shard-000001.npz",
    ]  # fmt: skip
    report = json.loads(fs.cat(f"{root}/report.json"))
    assert report["num_samples"] == 6 and report["protocol"]["classes"] == 2
    assert fs.cat(f"{root}/samples.png")[:8] == b"\x89PNG\r\n\x1a\n"
