"""Benchmark: VQGAN encode / decode throughput (images/s) at 256×256 for the reference tokenizer.

Measures `VQGAN.encode_to_indices` (images -> 16×16 token grid) and `VQGAN.decode_from_indices`
(token grid -> images) of the `imagenet-f16-1024` preset (taming's vqgan_imagenet_f16_1024, 72.1M
parameters; random initialisation: speed does not depend on the weights) at batch 1 and 16, in fp32
and under bf16 autocast (the nearest-code search stays fp32 by design). Runs on CUDA when present,
else CPU; the table says which. Each cell: one untimed warm-up call, then `--iterations` timed calls
(synchronised on CUDA); images/s = batch × iterations / seconds.

`--quick` warms up the encoder only (the untimed first encode that produces the indices to decode).

Inputs are real Fashion-MNIST images resized to 256×256 RGB when the dataset is available (random
pixels otherwise); throughput does not depend on the content.

Run: `python -m benchmarks.bench_tokenizer [--quick] [--device cpu|cuda] [--iterations N]`.
`--quick` uses batch 1 and 4 and one timed iteration.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from benchmarks.common import write_result
from tokenizer.config import preset
from tokenizer.vqgan import VQGAN

IMAGE_SIZE = 256


def input_images(batch: int) -> torch.Tensor:
    """(batch, 3, 256, 256) in [-1, 1]: Fashion-MNIST when available, else seeded random pixels."""
    try:
        from demo.example_data import load_fashion_mnist, to_rgb

        images, _ = load_fashion_mnist("test")
        pixels = to_rgb(images[:batch], size=IMAGE_SIZE)
    except FileNotFoundError:
        pixels = np.random.default_rng(0).integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _timed(fn, iterations: int, device: torch.device, warmup: bool) -> float:
    """Seconds for `iterations` calls of fn (after one untimed warm-up call when `warmup`)."""
    if warmup:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(
    model: VQGAN, batch: int, precision: str, iterations: int, device: torch.device, warmup: bool = True
) -> dict:
    images = input_images(batch).to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def encode():
        with autocast:
            return model.encode_to_indices(images)

    indices = encode()  # (B, 16, 16); this first call also warms up the encoder

    def decode():
        with autocast:
            return model.decode_from_indices(indices)

    encode_seconds = _timed(encode, iterations, device, warmup=False)
    decode_seconds = _timed(decode, iterations, device, warmup=warmup)
    return {
        "device": device.type,
        "batch": batch,
        "precision": precision,
        "encode img/s": batch * iterations / encode_seconds,
        "decode img/s": batch * iterations / decode_seconds,
        "encode ms/img": 1000 * encode_seconds / (batch * iterations),
        "decode ms/img": 1000 * decode_seconds / (batch * iterations),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="batch 1 and 4, one timed iteration, no decode warm-up"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=None, help="timed calls per cell (default 3)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batches = (1, 4) if args.quick else (1, 16)
    iterations = args.iterations or (1 if args.quick else 3)

    torch.manual_seed(0)
    model = VQGAN(preset("imagenet-f16-1024")).to(device).eval()
    rows = []
    for precision in ("fp32", "bf16"):
        for batch in batches:
            rows.append(measure(model, batch, precision, iterations, device, warmup=not args.quick))
            print(rows[-1], flush=True)
    notes = (
        f"imagenet-f16-1024 (72,141,699 params, random init), {IMAGE_SIZE}x{IMAGE_SIZE} -> 16x16 tokens; "
        f"{iterations} timed iteration(s) after 1 warm-up call"
        + (" (encode only: --quick)" if args.quick else "")
        + f"; torch threads {torch.get_num_threads()}."
    )
    return write_result("tokenizer", rows, notes=notes)


if __name__ == "__main__":
    main()
