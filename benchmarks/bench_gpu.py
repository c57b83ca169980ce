"""The pipeline's hot loops on a CUDA GPU: tokenizer encode / decode, transformer forward, sampler.

Run by `scripts/gpu_check.sh` (it skips on a machine without CUDA). Rows, each timed after warm-up
with `torch.cuda.synchronize()` around the timed region, medians of several repetitions:

* VQGAN imagenet-f16-1024 (256 px): encode and decode images/s, fp32 and bf16 autocast;
* the reference 256 px transformer (24 layers, width 768): forward TFLOP/s at batch 64 in bf16, next to
  a plain bf16 matmul of the same total FLOPs on this GPU (the share is what the model leaves on the
  table), and sampler images/s (8 steps, CFG 3);
* the v2 Halton transformer and LlamaGen tokenizer, when those modules are importable.

Weights are random: speed does not depend on them. Writes benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import write_result


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` on the GPU (synchronised), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)


def tokenizer_rows(batch: int, repeats: int) -> list[dict]:
    from tokenizer import VQGAN, preset

    model = VQGAN(preset("imagenet-f16-1024")).cuda().eval()
    images = torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1
    rows = []
    with torch.inference_mode():
        indices = model.encode_to_indices(images)
        for bf16 in (False, True):
            with autocast(bf16):
                encode = timed(lambda: model.encode_to_indices(images), repeats)
                decode = timed(lambda: model.decode_from_indices(indices), repeats)
            precision = "bf16" if bf16 else "fp32"
            rows.append({"what": f"VQGAN f16 encode 256², B={batch}", "precision": precision,
                         "value": batch / encode, "unit": "images/s"})  # fmt: skip
            rows.append({"what": f"VQGAN f16 decode 256², B={batch}", "precision": precision,
                         "value": batch / decode, "unit": "images/s"})  # fmt: skip
    return rows


def transformer_rows(batch: int, repeats: int) -> list[dict]:
    from benchmarks.bench_sampler import forward_flops
    from transformer import PRESETS, MaskTransformer, sample

    config = PRESETS["maskgit-imagenet256"]
    model = MaskTransformer(config).cuda().eval()
    grid = config.grid_size
    tokens = torch.randint(0, config.codebook_size, (batch, grid, grid), device="cuda")
    labels = torch.randint(0, config.num_classes, (batch,), device="cuda")
    drop = torch.zeros(batch, dtype=torch.bool, device="cuda")
    flops = forward_flops(config, batch, config.num_tokens)
    side = int(round((flops / 2) ** (1 / 3) / 64) * 64)  # one square matmul of about the same FLOPs
    a = torch.randn(side, side, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(side, side, device="cuda", dtype=torch.bfloat16)
    rows = []
    with torch.inference_mode():
        with autocast(True):
            forward = timed(lambda: model(tokens, labels, drop), repeats)
        matmul = timed(lambda: a @ b, repeats)
        matmul_rate = 2 * side**3 / matmul
        rows.append({"what": f"transformer 256 forward, B={batch}", "precision": "bf16",
                     "value": flops / forward / 1e12, "unit": "TFLOP/s"})  # fmt: skip
        rows.append({"what": f"bf16 matmul {side}³", "precision": "bf16", "value": matmul_rate / 1e12,
                     "unit": "TFLOP/s"})  # fmt: skip
        rows.append({"what": "forward / matmul rate", "precision": "bf16",
                     "value": flops / forward / matmul_rate, "unit": "ratio"})  # fmt: skip
        seeds = list(range(batch))
        with autocast(True):
            sampler = timed(
                lambda: sample(model, labels, seeds=seeds, steps=8, cfg_weight=3.0), max(2, repeats // 2)
            )
        rows.append({"what": f"sampler 8 steps CFG 3, B={batch}", "precision": "bf16",
                     "value": batch / sampler, "unit": "images/s"})  # fmt: skip
    return rows


def v2_rows(batch: int, repeats: int) -> list[dict]:
    """The v2 family, when its modules exist in this checkout."""
    rows = []
    if importlib.util.find_spec("transformer.halton") is not None:
        from transformer.config import HALTON_PRESETS
        from transformer.halton import HaltonTransformer

        name = next(n for n in HALTON_PRESETS if "base" in n)
        config = HALTON_PRESETS[name]
        model = HaltonTransformer(config).cuda().eval()
        grid = config.grid_size
        tokens = torch.randint(0, config.codebook_size, (batch, grid, grid), device="cuda")
        labels = torch.randint(0, config.num_classes, (batch,), device="cuda")
        drop = torch.zeros(batch, dtype=torch.bool, device="cuda")
        with torch.inference_mode(), autocast(True):
            forward = timed(lambda: model(tokens, labels, drop), repeats)
        rows.append({"what": f"Halton {name} forward, B={batch}", "precision": "bf16",
                     "value": batch / forward, "unit": "sequences/s"})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured (run it on a GPU machine)")
        return 0
    # Rows labelled fp32 are fp32: TF32 (10-bit mantissa matmuls and convolutions) stays off, so the
    # fp32 / bf16 ratio compares what the labels say.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    repeats = 3 if args.quick else 10
    rows = tokenizer_rows(32, repeats) + transformer_rows(64, repeats)
    try:
        rows += v2_rows(64, repeats)
    except (ImportError, StopIteration, AttributeError) as error:  # the v2 modules' names may differ
        print(f"bench_gpu: v2 rows skipped ({type(error).__name__}: {error})")
    notes = "Random weights; medians of synchronised repetitions after warm-up; fp32 rows with TF32 off."
    write_result("gpu", rows, notes=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
