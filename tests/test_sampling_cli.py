"""`maskgit sample`: class grids and inpainting edits through a real (tiny) VQGAN and transformer."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from generation import blend_into
from jobs.cli import main as cli_main
from pipeline.images import encode_png
from tokenizer import PRESETS as VQGAN_PRESETS
from tokenizer import VQGAN, save_vqgan
from transformer import MaskTransformer, SamplingConfig, TransformerConfig, save_transformer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-cli")
    torch.manual_seed(0)
    vqgan_config = VQGAN_PRESETS["tiny-f4"]  # 32 px -> 8×8 tokens, 256 codes
    save_vqgan(VQGAN(vqgan_config), root / "vqgan")
    config = TransformerConfig(
        codebook_size=vqgan_config.codebook_size, grid_size=8, num_classes=10, hidden_size=32, depth=2,
        num_heads=4, mlp_size=64,
    )  # fmt: skip
    save_transformer(MaskTransformer(config), root / "transformer", sampling=SamplingConfig(steps=3))
    return root


def base_args(checkpoints) -> list[str]:
    return [
        "sample",
        "--transformer",
        str(checkpoints / "transformer"),
        "--tokenizer",
        str(checkpoints / "vqgan"),
    ]


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))


def test_class_grid(checkpoints, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = [
        "sample",
        "--transformer",
        str(checkpoints / "transformer"),
        "--tokenizer",
        str(checkpoints / "vqgan"),
    ]
    code = cli_main(
        [*args, "--out", str(out), "--classes", "0", "3", "--per-class", "3", "--batch-size", "4"]
    )
    assert code == 0
    grid = read_png(out)
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)  # 2 rows × 3 columns of 32 px tiles, 2 px padding
    assert "wrote" in capsys.readouterr().out
    # Seeds are per sample, so the batch size does not change the images.
    again = tmp_path / "again.png"
    cli_main([*args, "--out", str(again), "--classes", "0", "3", "--per-class", "3", "--batch-size", "6"])
    assert np.array_equal(read_png(again), grid)
    # bf16 autocast runs too.
    bf16 = tmp_path / "bf16.png"
    assert (
        cli_main([*args, "--out", str(bf16), "--classes", "1", "--per-class", "2", "--precision", "bf16"])
        == 0
    )


def test_inpainting_keeps_the_image_outside_the_box(checkpoints, tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    image = images[0]  # (32, 32, 3) uint8 real Fashion-MNIST
    (tmp_path / "input.png").write_bytes(encode_png(image))
    out = tmp_path / "edit.png"
    code = cli_main(
        [
            *base_args(checkpoints), "--out", str(out), "--image", str(tmp_path / "input.png"),
            "--box", "8", "8", "8", "12",
            "--margin", "0", "--blur-radius", "0", "--class-id", str(int(labels[0])), "--per-class", "2",
        ]
    )  # fmt: skip
    assert code == 0
    grid = read_png(out)
    tiles = [grid[2:34, 2 + 34 * i : 34 + 34 * i] for i in range(3)]  # original, edit 1, edit 2
    assert np.array_equal(tiles[0], image)
    box = np.zeros((32, 32), dtype=bool)
    box[8:16, 8:20] = True  # token rows 2:4, columns 2:5 at f = 4
    for edited in tiles[1:]:
        assert np.array_equal(edited[~box], image[~box])
        assert not np.array_equal(edited[box], image[box])


def test_blend_uses_a_blurred_mask():
    original = np.zeros((32, 32, 3), np.uint8)
    generated = np.full((1, 32, 32, 3), 200, np.uint8)
    region = np.zeros((8, 8), bool)
    region[3:5, 3:5] = True
    blended = blend_into(generated, original, region)  # default radius 32/16 - 1 = 1 px
    assert blended[0, 16, 16, 0] == 200  # deep inside
    assert blended[0, 0, 0, 0] == 0  # far outside
    edge = blended[0, 12, 10:14, 0]
    assert 0 < edge.min() < 200 or 0 < edge.max() < 200  # a soft transition at the box edge


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "10"], "class ids must be in"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--image", "x.png"], "needs both --image and --box"),
        (["--image", "missing.png", "--box", "0", "0", "4", "4"], "no image at"),
    ],
)
def test_bad_input_is_one_clear_line(checkpoints, tmp_path, capsys, extra, message):
    code = cli_main(
        [
            *base_args(checkpoints), "--out", str(tmp_path / "x.png"), *extra,
        ]
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_seed_bound_and_any_order_with_any_schedule(checkpoints, tmp_path, capsys):
    """The CLI takes what the HTTP API takes: seeds in [0, 2**53), and any order with any schedule."""
    out = str(tmp_path / "x.png")
    one = [*base_args(checkpoints), "--out", out, "--classes", "0", "--per-class", "1"]
    for seed in (str(2**53), "-1"):
        with pytest.raises(SystemExit) as exited:
            cli_main([*one, "--seed", seed])
        assert exited.value.code == 2
        assert "a seed must be an integer in [0, 2**53" in capsys.readouterr().err
    assert cli_main([*one, "--seed", str(2**53 - 1), "--order", "halton", "--schedule", "cosine"]) == 0
    assert cli_main([*one, "--order", "confidence", "--schedule", "halton"]) == 0
    # seed + i must stay below the bound too: two images from the last seed are refused in one line.
    assert cli_main([*one, "--per-class", "2", "--seed", str(2**53 - 1)]) == 2
    assert "a seed must be an integer in [0, 2**53" in capsys.readouterr().err
