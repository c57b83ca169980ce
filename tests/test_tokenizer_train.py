"""Tokenizer training on real Fashion-MNIST: error goes down, outputs are written, resume is exact."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from demo.example_data import balanced_subset, load_fashion_mnist, to_rgb, write_image_folder
from jobs.cli import main as cli_main
from pipeline.images import to_model_input
from tokenizer.checkpoint import load_vqgan
from tokenizer.config import preset
from tokenizer.quality import measure_reconstruction
from tokenizer.train import TokenizerTrainingConfig, train_tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These small convolutions run several times faster on one OpenMP thread than on two when the
    # two cores are shared with other processes (busy-waiting threads); restore the setting after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def train_set(fashion_mnist_small) -> TensorDataset:
    images, labels = fashion_mnist_small  # 200 RGB 32×32 uint8
    return TensorDataset(to_model_input(images), torch.from_numpy(labels))


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    images, labels = load_fashion_mnist("test")
    return to_model_input(
        to_rgb(images[balanced_subset(labels, per_class=4, seed=1)], size=32)
    )  # (40, 3, 32, 32)


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_lowers_held_out_error_and_resumes(tmp_path, train_set, held_out):
    config = TokenizerTrainingConfig(
        vqgan=preset("tiny-f4"),
        steps=160,
        batch_size=16,
        lr=1e-3,
        disc_start=140,  # the GAN and its adaptive weight run for the last 20 steps
        perceptual="none",
        dead_code_restart=40,
        log_every=20,
        checkpoint_every=80,
        grid_images=16,
    )
    summary = train_tokenizer(config, train_set, tmp_path, eval_images=held_out, progress=False)

    assert summary.steps == 160 and summary.start_step == 0
    assert summary.final.mse * 3 <= summary.initial.mse, (summary.initial, summary.final)
    assert summary.final.psnr > summary.initial.psnr + 4
    assert summary.final.codebook_fraction_used > 0.25 and summary.final.perplexity > 20

    # The saved tokenizer is the trained one.
    reloaded = measure_reconstruction(load_vqgan(summary.model_dir), held_out).report
    assert reloaded.mse == pytest.approx(summary.final.mse, rel=1e-6)

    # The grid: 16 originals and 16 reconstructions, 8 per row, 32 px tiles with 2 px padding.
    grid = np.asarray(Image.open(summary.grid_path))
    assert grid.shape == (4 * 34 + 2, 8 * 34 + 2, 3)

    log = read_log(summary.log_path)
    evals = [r for r in log if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [0, 160] and evals[-1]["mse"] == summary.final.mse
    steps = [r for r in log if "event" not in r]
    assert [r["step"] for r in steps] == list(range(20, 161, 20))
    assert all("disc_loss" in r for r in steps if r["step"] > 140)
    assert not any("disc_loss" in r for r in steps if r["step"] <= 140)
    assert steps[-1]["gan_weight"] > 0
    assert any(r.get("event") == "restart" for r in log)
    assert {"codebook_fraction_used", "perplexity", "reconstruction", "quantizer"} <= set(steps[-1])

    with pytest.raises(ValueError, match="already holds a training run"):
        train_tokenizer(config, train_set, tmp_path, eval_images=held_out, progress=False)
    longer = dataclasses.replace(config, steps=170)
    resumed = train_tokenizer(longer, train_set, tmp_path, eval_images=held_out, resume=True, progress=False)
    assert (resumed.start_step, resumed.steps) == (160, 170)
    assert resumed.initial.mse == pytest.approx(summary.final.mse, rel=1e-6)
    assert read_log(summary.log_path)[-2]["step"] == 170


def test_resumed_run_equals_uninterrupted_run(tmp_path, train_set):
    def config(steps: int) -> TokenizerTrainingConfig:
        return TokenizerTrainingConfig(
            vqgan=preset("tiny-f4"),
            steps=steps,
            batch_size=8,
            lr=1e-3,
            disc_start=2,
            perceptual="none",
            dead_code_restart=2,
            checkpoint_every=100,
            grid_images=4,
        )

    straight = train_tokenizer(config(6), train_set, tmp_path / "a", progress=False)
    train_tokenizer(config(3), train_set, tmp_path / "b", progress=False)
    resumed = train_tokenizer(config(6), train_set, tmp_path / "b", resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "training_state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "training_state.pt", weights_only=True)
    for part in ("model", "discriminator"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    assert straight.final == resumed.final


def test_a_different_architecture_cannot_resume(tmp_path, train_set):
    config = TokenizerTrainingConfig(vqgan=preset("tiny-f4"), steps=1, batch_size=8, perceptual="none")
    train_tokenizer(config, train_set, tmp_path, progress=False)
    other = TokenizerTrainingConfig(vqgan=preset("tiny-f4").replace(n_embed=128), steps=2, perceptual="none")
    with pytest.raises(ValueError, match="different VQGAN config"):
        train_tokenizer(other, train_set, tmp_path, resume=True, progress=False)


def test_train_tokenizer_cli_end_to_end(tmp_path, fashion_mnist_small, capsys):
    images, labels = fashion_mnist_small
    data = write_image_folder(images[:48], labels[:48], tmp_path / "data")
    out = tmp_path / "out"
    base = ["train-tokenizer", "--data", str(data), "--out", str(out), "--preset", "tiny-f4"]
    flags = ["--batch-size", "8", "--lr", "1e-3", "--disc-start", "3", "--eval-count", "8", "--no-progress"]
    assert cli_main([*base, *flags, "--steps", "5", "--perceptual", "efficientnet"]) == 0
    printed = capsys.readouterr().out
    assert "reconstruction MSE" in printed and "codebook used" in printed
    model = load_vqgan(out / "vqgan")
    assert model.config == preset("tiny-f4")
    assert (out / "reconstructions.png").is_file()
    log = read_log(out / "log.jsonl")
    assert log[-1]["event"] == "eval" and log[-1]["num_images"] == 8
    assert any(r.get("perceptual", 0) > 0 for r in log)

    assert cli_main([*base, *flags, "--steps", "5"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert cli_main([*base, *flags, "--steps", "7", "--perceptual", "efficientnet", "--resume"]) == 0
    assert "steps 5 -> 7" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--image-size", "30"], "multiple of the downsampling factor 4"),
        (["--perceptual", "lpips"], "--lpips-weights"),
        (["--preset", "huge"], "unknown VQGAN preset 'huge'"),
    ],
)
def test_train_tokenizer_cli_bad_input(tmp_path, fashion_mnist_small, capsys, extra, message):
    images, labels = fashion_mnist_small
    data = write_image_folder(images[:10], labels[:10], tmp_path / "data")
    args = ["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "out"), "--preset", "tiny-f4"]
    assert cli_main([*args, "--steps", "1", "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_train_tokenizer_cli_missing_data(tmp_path, capsys):
    args = [
        "train-tokenizer",
        "--data",
        str(tmp_path / "nothing"),
        "--out",
        str(tmp_path / "o"),
        "--preset",
        "tiny-f4",
    ]
    assert cli_main(args) == 2
    assert "nothing" in capsys.readouterr().err


def test_bf16_autocast_training_keeps_fp32_weights(tmp_path, train_set):
    config = TokenizerTrainingConfig(
        vqgan=preset("tiny-f4"),
        steps=3,
        batch_size=8,
        lr=1e-3,
        disc_start=1,
        perceptual="none",
        precision="bf16",
    )
    summary = train_tokenizer(config, train_set, tmp_path, progress=False)
    steps = [r for r in read_log(summary.log_path) if "event" not in r]
    assert all(np.isfinite(r["total"]) and np.isfinite(r["disc_loss"]) for r in steps[-1:])
    model = load_vqgan(summary.model_dir)
    assert all(p.dtype == torch.float32 for p in model.parameters())
