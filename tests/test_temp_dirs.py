"""Nothing left behind (issue 22 part 5): every `maskgit` command, on success and on failure, leaves
$TMPDIR as it found it.

Each command runs with TMPDIR pointing at a fresh, empty folder (in process: `tempfile.tempdir` reset,
since Python caches `gettempdir()`; Ray and DeepSpeed commands: a subprocess with that environment, so
Ray's workers inherit it too) and the folder must be empty afterwards. What a failed run keeps for its
user stays in the run's own folder (a training run's metrics so far), never in $TMPDIR.

Ray's own session dir does not count: Ray writes it under $RAY_TMPDIR (else $TMPDIR/ray on Linux) and
keeps it after shutdown on purpose (`session_latest/logs` is how a failed Ray job is debugged; Ray and
`ray stop` manage it). The Ray tests point RAY_TMPDIR at a separate short folder (Ray's unix sockets
need a short path) and check $TMPDIR only, which is where our own code writes. Likewise torch's compile
cache: importing `torch._dynamo` creates `$TMPDIR/torchinductor_<user>` (a per-user cache every later
process reuses, moved by TORCHINDUCTOR_CACHE_DIR), so the tests point TORCHINDUCTOR_CACHE_DIR elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from test_halton_model import released_file
from test_sampling_cli import (
    base_args,
    checkpoints,  # noqa: F401 (its fixture: a tiny VQGAN + transformer)
)
from test_tokenizer_checkpoint import SMALL_TAMING, lightning_checkpoint, save_lightning, taming_yaml

from demo.example_data import write_image_folder
from jobs.cli import main as cli_main


@pytest.fixture
def empty_tmpdir(tmp_path, monkeypatch) -> Path:
    """A fresh $TMPDIR for in-process commands (Python's cached `gettempdir()` reset)."""
    folder = tmp_path / "TMPDIR"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-cache"))  # torch's, see above
    monkeypatch.setattr(tempfile, "tempdir", None)
    return folder


def left_in(folder: Path) -> str:
    """What is in `folder`, one path a line ("" when empty)."""
    return "\n".join(sorted(str(p.relative_to(folder)) for p in folder.rglob("*")))


def run_cli(args: list[str], tmp: Path, *, env: dict[str, str] | None = None, timeout_s: float = 600):
    """`maskgit ARGS` in a subprocess with TMPDIR=tmp and a short RAY_TMPDIR of its own (removed after)."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # the test's own, outside the checked folder
    full_env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        **(env or {}),
        "TMPDIR": str(tmp),
        "RAY_TMPDIR": ray_tmp,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp.parent / "torch-cache"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    try:
        return subprocess.run(
            [sys.executable, "-m", "jobs.cli", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_convert_commands_leave_nothing(empty_tmpdir, tmp_path):
    from tokenizer import VQGAN
    from transformer.config import HALTON_PRESETS

    torch.manual_seed(0)
    save_lightning(lightning_checkpoint(VQGAN(SMALL_TAMING).eval()), tmp_path / "last.ckpt")
    # no model.yaml: refused
    assert cli_main(["convert-vqgan", str(tmp_path / "last.ckpt"), str(tmp_path / "v1")]) == 2
    (tmp_path / "model.yaml").write_text(taming_yaml(SMALL_TAMING))
    assert cli_main(["convert-vqgan", str(tmp_path / "last.ckpt"), str(tmp_path / "v2")]) == 0

    path = tmp_path / "halton.pth"
    released_file(path, HALTON_PRESETS["halton-imagenet256-tiny"], optimizer=False)
    assert cli_main(["convert-transformer", str(path), str(tmp_path / "t")]) == 0
    # A width the reference never released: refused once the weights are read.
    released_file(path, HALTON_PRESETS["halton-tiny"], optimizer=False)
    assert cli_main(["convert-transformer", str(path), str(tmp_path / "t1")]) == 2
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    assert cli_main(["convert-transformer", str(tmp_path / "bad.pth"), str(tmp_path / "t2")]) != 0
    assert not left_in(empty_tmpdir), left_in(empty_tmpdir)


def test_sample_leaves_nothing(empty_tmpdir, checkpoints, tmp_path):  # noqa: F811 (the fixture)
    args = [*base_args(checkpoints), "--classes", "0", "--per-class", "2"]
    assert cli_main([*args, "--out", str(tmp_path / "grid.png")]) == 0
    # Late failure: the flags parse, the models load, then the image to edit is missing.
    missing = ["--image", str(tmp_path / "missing.png"), "--box", "0", "0", "4", "4"]
    assert cli_main([*args, "--out", str(tmp_path / "x.png"), *missing]) == 2
    assert not left_in(empty_tmpdir), left_in(empty_tmpdir)


def test_fid_stats_leaves_nothing(empty_tmpdir, fashion_mnist_small, tmp_path):
    images, labels = fashion_mnist_small
    folder = write_image_folder(images[:8], labels[:8], tmp_path / "tree")
    args = ["fid-stats", "--source", str(folder), "--resolution", "32", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "ref.npz")]) == 0
    weights = ["--evaluator", "inception", "--inception-weights", str(tmp_path / "missing.pth")]
    assert cli_main([*args, "--out", str(tmp_path / "x.npz"), *weights]) == 2
    assert cli_main([*args[:2], str(tmp_path / "nothing"), *args[3:], "--out", str(tmp_path / "y.npz")]) == 2
    assert not left_in(empty_tmpdir), left_in(empty_tmpdir)


def test_train_tokenizer_leaves_nothing(empty_tmpdir, fashion_mnist_small, tmp_path):
    images, labels = fashion_mnist_small
    data = write_image_folder(images[:8], labels[:8], tmp_path / "data")
    base = ["train-tokenizer", "--data", str(data), "--preset", "tiny-f4", "--batch-size", "4"]
    flags = ["--steps", "2", "--perceptual", "none", "--eval-count", "4", "--no-progress"]
    assert cli_main([*base, "--out", str(tmp_path / "ok"), *flags]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "bad"), *flags, "--image-size", "30"]) == 2
    assert not left_in(empty_tmpdir), left_in(empty_tmpdir)


@pytest.mark.ray
@pytest.mark.slow
def test_tokenize_leaves_nothing(fashion_vqgan, fashion_mnist_small, tmp_path):
    images, labels = fashion_mnist_small
    folder = write_image_folder(images[:12], labels[:12], tmp_path / "images")
    tmp = tmp_path / "TMPDIR"
    tmp.mkdir()
    flags = [
        "--resolution",
        "32",
        "--shard-size",
        "6",
        "--batch-size",
        "6",
        "--num-cpus",
        "2",
        "--no-progress",
    ]
    args = ["tokenize", "--input", str(folder), "--tokenizer", str(fashion_vqgan), *flags]
    ok = run_cli([*args, "--output", str(tmp_path / "store")], tmp)
    assert ok.returncode == 0, ok.stderr[-3000:]
    # Late failure: the same store with other settings is refused once the job has opened it.
    again = run_cli([*args[:-8], "--resolution", "64", *flags[2:], "--output", str(tmp_path / "store")], tmp)
    assert again.returncode != 0
    assert not left_in(tmp), left_in(tmp)


@pytest.mark.s3
@pytest.mark.ray
@pytest.mark.deepspeed
@pytest.mark.slow
def test_train_to_s3_and_export_leave_nothing(fashion_token_store, s3_server, tmp_path, monkeypatch):
    """A tiny run with a remote --out (the staging dir of its logs, the workers' checkpoint scratch), a
    run that fails inside the workers (a bad mask schedule, found at the first step), then `export`."""
    store = fashion_token_store
    tmp = tmp_path / "TMPDIR"
    tmp.mkdir()
    run_url = s3_server.url("temp-dirs", "run")
    args = [
        "train", "--store", store["url"], "--preset", "tiny",
        "--codebook-size", str(store["codebook_size"]), "--grid-size", str(store["grid_size"]),
        "--num-classes", str(store["num_classes"]), "--depth", "2", "--workers", "1",
        "--cpus-per-worker", "2", "--global-batch-size", "16", "--micro-batch-size", "16", "--steps", "2",
        "--checkpoint-every", "2",
        "--log-every", "1", "--sample-steps", "2", "--max-failures", "0",
    ]  # fmt: skip
    ok = run_cli([*args, "--out", run_url], tmp, env=s3_server.env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    failed = run_cli([*args, "--out", s3_server.url("temp-dirs", "failed"), "--mask-schedule", "nope"], tmp,
                     env=s3_server.env)  # fmt: skip
    assert failed.returncode != 0
    # multiprocessing's own `pymp-*/listener-*` dirs of the Ray Train worker processes are set aside
    # (see the end of the test); anything else (our staging and checkpoint scratch) must be gone.
    ours = [p.name for p in tmp.iterdir() if not p.name.startswith("pymp-")]
    assert not ours, left_in(tmp)
    mp_dirs = sorted(p.name for p in tmp.iterdir())
    shutil.rmtree(tmp)
    tmp.mkdir()

    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-cache"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    options = ["--storage-options", json.dumps(s3_server.storage_options)]
    assert cli_main(["export", f"{run_url}/checkpoints", str(tmp_path / "weights"), *options]) == 0
    assert cli_main(["export", f"{run_url}/checkpoints", str(tmp_path / "w2"), "--step", "99", *options]) != 0
    assert not left_in(tmp), left_in(tmp)
    if mp_dirs:
        # Open (issue 22 part 5): each training run leaves one `pymp-*/listener-*`, multiprocessing's
        # temp dir, made in a Ray Train worker process that Ray ends without running its finalizers.
        pytest.xfail(f"multiprocessing temp dirs left by the Ray Train workers: {mp_dirs}")
