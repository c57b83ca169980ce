"""The DeepSpeed ZeRO training job on Ray Train, on a real token store made by the tokenization job.

Real processes throughout: Ray Train workers each run one DeepSpeed engine over gloo; the store comes
from `maskgit tokenize` on Fashion-MNIST; the kill test SIGKILLs a real `maskgit train` process.
"""

from __future__ import annotations

import dataclasses
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

from jobs.train.checkpoints import CheckpointError, CheckpointStore, step_dirname
from jobs.train.config import TrainJobConfig
from jobs.train.deepspeed_config import OptimizerSettings
from jobs.train.driver import check_store_matches_model, run_training
from jobs.train.metrics_log import read_metrics

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def job_config(store: dict, out: Path, **overrides) -> TrainJobConfig:
    """A tiny model on the store, small batches, per-step metrics, reference recipe otherwise."""
    base = TrainJobConfig(
        store=store["url"],
        out=str(out),
        preset="tiny",
        model_overrides={
            "codebook_size": store["codebook_size"],
            "grid_size": store["grid_size"],
            "num_classes": store["num_classes"],
            "depth": 2,
        },
        num_workers=2,
        global_batch_size=32,
        micro_batch_size=16,
        steps=24,
        checkpoint_every=8,
        log_every=1,
        optimizer=OptimizerSettings(lr=2e-3),
        sampling={"steps": 4, "cfg_weight": 1.0},
        cpus_per_worker=1.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def zero1_run(ray_local, fashion_token_store, tmp_path_factory):
    """The reference configuration (ZeRO-1, fp32, 2 workers, 24 steps, checkpoints every 8), run once."""
    config = job_config(fashion_token_store, tmp_path_factory.mktemp("zero1") / "run")
    return config, run_training(config)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def check_finished_run(config: TrainJobConfig, export_dir: str, store: dict, *, has_ema: bool) -> None:
    """Loss fell, the pictures and logs exist, the last checkpoint is complete and the export samples."""
    from transformer.checkpoint import load_sampling_config, load_transformer
    from transformer.sample import sample

    run_dir = Path(config.out)
    curve = losses(run_dir)
    assert sorted(curve) == list(range(1, config.steps + 1))
    first, last = np.mean([curve[s] for s in (1, 2, 3)]), np.mean([curve[s] for s in (22, 23, 24)])
    assert last < 0.7 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    checkpoints = CheckpointStore(config.checkpoint_uri)
    assert checkpoints.latest_step() == config.steps
    assert checkpoints.read_meta(config.steps).has_ema == has_ema

    model = load_transformer(export_dir).eval()
    assert model.config.depth == 2 and model.config.codebook_size == store["codebook_size"]
    sampling = load_sampling_config(export_dir)
    assert sampling.steps == 4 and sampling.cfg_weight == 1.0
    tokens = sample(model, torch.arange(4), seeds=[0, 1, 2, 3], **sampling.as_kwargs()).tokens
    assert tokens.shape == (4, store["grid_size"], store["grid_size"])
    assert int(tokens.max()) < store["codebook_size"]


def test_zero1_trains_with_falling_loss_and_exports_for_the_sampler(zero1_run, fashion_token_store):
    config, summary = zero1_run
    check_finished_run(config, summary.export_dir, fashion_token_store, has_ema=False)


@pytest.mark.parametrize(
    ("stage", "precision", "ema"), [(2, "bf16", None), (3, "fp32", 0.9)], ids=["zero2-bf16", "zero3-fp32-ema"]
)
def test_zero2_and_zero3_train_with_falling_loss_and_export_for_the_sampler(
    ray_local, fashion_token_store, tmp_path, stage, precision, ema
):
    config = job_config(
        fashion_token_store, tmp_path / "run", zero_stage=stage, precision=precision, ema_decay=ema
    )
    summary = run_training(config)
    check_finished_run(config, summary.export_dir, fashion_token_store, has_ema=ema is not None)


def _wait_for_checkpoint(checkpoints: Path, step: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = checkpoints / "latest.json"
        if latest.is_file() and json.loads(latest.read_text())["step"] >= step:
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early with code {process.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint at step {step} after {timeout_s} s")


def test_killed_run_resumes_on_the_uninterrupted_loss_curve_and_on_one_worker(
    zero1_run, fashion_token_store, tmp_path
):
    import shutil

    reference, _ = zero1_run
    expected = losses(Path(reference.out))

    # A real `maskgit train` process (its own embedded Ray), SIGKILLed after its step-8 checkpoint.
    killed = job_config(fashion_token_store, tmp_path / "killed")
    args = [
        sys.executable, "-m", "jobs.cli", "train",
        "--store", killed.store, "--out", killed.out, "--preset", "tiny",
        "--codebook-size", str(fashion_token_store["codebook_size"]),
        "--grid-size", str(fashion_token_store["grid_size"]),
        "--num-classes", str(fashion_token_store["num_classes"]),
        "--depth", "2", "--workers", "2", "--global-batch-size", "32", "--micro-batch-size", "16",
        "--steps", str(killed.steps), "--checkpoint-every", "8", "--log-every", "1", "--lr", "2e-3",
        "--sample-steps", "4", "--cfg-weight", "1.0",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    process = subprocess.Popen(
        args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_checkpoint(tmp_path / "killed" / "checkpoints", 8, process, timeout_s=400)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    interrupted_at = CheckpointStore(killed.checkpoint_uri).latest_step()
    assert 8 <= interrupted_at < killed.steps

    run_training(killed)  # resumes from the latest complete checkpoint, same world size
    resumed = losses(tmp_path / "killed")
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), f"step {step}"

    # The run continued on 1 worker (gradient accumulation 2 keeps the global batch and the
    # per-micro-batch masks): the universal-checkpoint path reshards ZeRO state for the new world size.
    shutil.copytree(reference.out, tmp_path / "continued")
    longer = dataclasses.replace(
        reference,
        out=str(tmp_path / "continued"),
        num_workers=1,
        steps=reference.steps + 8,
        cpus_per_worker=2.0,
    )
    run_training(longer)
    continued = losses(tmp_path / "continued")
    assert sorted(continued) == list(range(1, longer.steps + 1))
    assert all(np.isfinite(continued[s]) for s in range(reference.steps + 1, longer.steps + 1))
    assert np.mean([continued[s] for s in range(25, 33)]) < np.mean([expected[s] for s in (1, 2, 3)])


def test_store_model_mismatch_and_unreachable_store_are_clear_errors(fashion_token_store, tmp_path):
    config = job_config(fashion_token_store, tmp_path / "run")
    check_store_matches_model(config)  # the matching configuration passes
    wrong = dataclasses.replace(
        config,
        model_overrides={**config.model_overrides, "codebook_size": fashion_token_store["codebook_size"] + 1},
    )
    with pytest.raises(ValueError, match="codebook size"):
        check_store_matches_model(wrong)
    wrong_grid = dataclasses.replace(config, model_overrides={**config.model_overrides, "grid_size": 4})
    with pytest.raises(ValueError, match="token grid"):
        check_store_matches_model(wrong_grid)

    unreachable = dataclasses.replace(
        config,
        store="s3://nowhere/store",
        storage_options={
            "key": "k",
            "secret": "s",
            "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        },
    )
    with pytest.raises(ValueError, match=r"s3://nowhere/store"):
        check_store_matches_model(unreachable)

    from jobs.cli import main

    assert main(["train", "--store", str(tmp_path / "no-store"), "--out", str(tmp_path / "x")]) == 2


def test_corrupted_checkpoint_is_named_and_never_loaded(zero1_run, fashion_token_store, tmp_path):
    import shutil

    reference, _ = zero1_run
    shutil.copytree(reference.out, tmp_path / "run")
    config = dataclasses.replace(reference, out=str(tmp_path / "run"), steps=reference.steps + 8)
    store = CheckpointStore(config.checkpoint_uri)
    step = store.latest_step()
    victim = next((tmp_path / "run" / "checkpoints" / step_dirname(step)).glob("*optim_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=victim.name):
        store.download(step, tmp_path / "download")
    # The training job refuses to resume from it, naming the file, before any worker trains on it.
    with pytest.raises(Exception, match=victim.name):
        run_training(config)
    (tmp_path / "run" / "checkpoints" / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"latest\.json"):
        store.latest_step()
