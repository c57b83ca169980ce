"""Sampler throughput of the 256 preset, and how close its forward pass runs to the machine's matmul rate.

Claims measured (issue #3, item 7), all in one run on one machine:

* the fp32 forward pass reaches >= 90 % of the GFLOP/s of a plain matmul suite with the same shapes
  (every GEMM of the forward: q/k/v, output projection, MLP, attention's two batched products, the
  embedding MLPs and the head), timed interleaved with the forward so machine load hits both alike;
* the bf16-autocast forward reaches >= 60 % of the same suite's bf16 GFLOP/s at batch 16 (issue #16
  item 2); measured only where the CPU has bf16 kernels (AVX512-BF16 or AMX: see
  `benchmarks.common.bf16_kernels_available`), since elsewhere torch's bf16 fallback is tens of times
  slower than fp32 and the sampler rows would run for hours;
* the bf16-autocast sampler gives >= 1.8x the fp32 sampler's images/s; how far bf16 logits and
  sampled tokens drift from fp32 is reported next to it;
* no work is spent on positions or vocabulary entries whose result is thrown away: the FLOPs per
  image of our sampler are shown next to what the reference's loop would compute (head over all 257
  positions and 2026 vocabulary rows, both CFG halves from the first step).

The weights are random (no released checkpoint is available offline): speed does not depend on them,
but the drift numbers of a trained model may differ. Run `python -m benchmarks.bench_sampler`
(`--quick` uses the "small" preset and small batches, as a smoke test; `--forward-only` stops after
the forward-vs-matmul rows). Every table names the CPU, its bf16-relevant flags and whether bf16
kernels exist.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import autocast_for, bf16_kernels_available, cpu_flags, cpu_model, write_result
from transformer import PRESETS, MaskTransformer, TransformerConfig, sample, tokens_per_step


def forward_flops(config: TransformerConfig, batch: int, head_positions: int) -> float:
    """Multiply-adds × 2 of one forward pass of `batch` sequences with the head on `head_positions` each."""
    s, n, d, m, k = (
        config.sequence_length,
        config.num_tokens,
        config.hidden_size,
        config.mlp_size,
        config.codebook_size,
    )
    per_layer = 2 * s * d * 3 * d + 2 * s * d * d + 2 * 2 * s * d * m + 2 * 2 * s * s * d
    embedding_mlps = 2 * 2 * s * d * d + 2 * n * d * d
    return batch * (config.depth * per_layer + embedding_mlps + 2 * head_positions * d * k)


def reference_sampler_flops(config: TransformerConfig, steps: int, cfg: bool) -> float:
    """FLOPs per image of the reference loop: head over S positions × V rows, CFG halves at every step."""
    s, d, v = config.sequence_length, config.hidden_size, config.vocab_size
    body = (
        forward_flops(config, 1, 0) + 2 * (s - config.num_tokens) * d * d
    )  # its last_layer also sees the class token
    return steps * (2 if cfg else 1) * (body + 2 * s * d * v)


def our_sampler_flops(config: TransformerConfig, steps: int, schedule: str, cfg: bool) -> float:
    """FLOPs per image of `sample()`: head on still-masked positions only, no unconditional half at ω = 0."""
    total, remaining = 0.0, config.num_tokens
    for step, count in enumerate(tokens_per_step(config.num_tokens, steps, schedule)):
        halves = 2 if cfg and step > 0 else 1  # linear CFG ramp: ω_0 = 0
        total += halves * forward_flops(config, 1, remaining)
        remaining -= count
    return total


def matmul_suite(config: TransformerConfig, batch: int, dtype: torch.dtype) -> Callable[[], None]:
    """A function running every GEMM of one all-positions forward pass as plain matmuls of the same shapes."""
    s, n, d, m, k = (
        config.sequence_length,
        config.num_tokens,
        config.hidden_size,
        config.mlp_size,
        config.codebook_size,
    )
    h, dh = config.num_heads, config.head_dim
    rows = batch * s

    def operands(*shapes):
        return [torch.randn(shape, dtype=dtype) for shape in shapes]

    gemms = [  # (left, right, repeats)
        (*operands((rows, d), (d, 3 * d)), config.depth),
        (*operands((rows, d), (d, d)), config.depth + 2),  # output projections + first_layer's two linears
        (*operands((rows, d), (d, m)), config.depth),
        (*operands((rows, m), (m, d)), config.depth),
        (*operands((batch * n, d), (d, d)), 1),  # last_layer
        (*operands((batch * n, d), (d, k)), 1),  # head
    ]
    scores, values = (
        operands((batch * h, s, dh), (batch * h, dh, s)),
        operands((batch * h, s, s), (batch * h, s, dh)),
    )

    def run() -> None:
        for left, right, repeats in gemms:
            for _ in range(repeats):
                torch.mm(left, right)
        for _ in range(config.depth):
            torch.bmm(*scores)
            torch.bmm(*values)

    return run


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure_forward(model: MaskTransformer, batch: int, precision: str, repeats: int) -> dict:
    config = model.config
    tokens = torch.full((batch, config.grid_size, config.grid_size), config.mask_token_id)
    class_ids = torch.zeros(batch, dtype=torch.long)
    positions = torch.ones(batch, config.num_tokens, dtype=torch.bool)
    suite = matmul_suite(config, batch, torch.bfloat16 if precision == "bf16" else torch.float32)

    def forward() -> None:
        with torch.no_grad(), autocast_for(precision):
            model(tokens, class_ids, positions=positions)

    forward(), suite()  # warm-up
    forward_times, matmul_times = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both
        forward_times.append(timed(forward))
        matmul_times.append(timed(suite))
    flops = forward_flops(config, batch, config.num_tokens)
    forward_time, matmul_time = statistics.median(forward_times), statistics.median(matmul_times)
    return {
        "precision": precision,
        "batch": batch,
        "load_1m": os.getloadavg()[0],
        "forward_ms": 1e3 * forward_time,
        "forward_gflops": flops / forward_time / 1e9,
        "matmul_gflops": flops / matmul_time / 1e9,
        "fraction_of_matmul": matmul_time / forward_time,
    }


def measure_sampler(
    model: MaskTransformer, batch: int, precision: str, cfg: bool, steps: int
) -> tuple[dict, torch.Tensor]:
    class_ids = torch.arange(batch) % model.config.num_classes
    seeds = list(range(batch))
    with autocast_for(precision):
        start = time.perf_counter()
        tokens = sample(model, class_ids, steps=steps, cfg_weight=3.0 if cfg else 0.0, seeds=seeds).tokens
        elapsed = time.perf_counter() - start
    flops = our_sampler_flops(model.config, steps, "arccos", cfg)
    row = {
        "precision": precision,
        "batch": batch,
        "cfg": cfg,
        "images_per_s": batch / elapsed,
        "s_per_image": elapsed / batch,
        "gflops_per_image": flops / 1e9,
        "reference_gflops_per_image": reference_sampler_flops(model.config, steps, cfg) / 1e9,
        "achieved_gflops": flops * batch / elapsed / 1e9,
        "load_1m": os.getloadavg()[0],
    }
    return row, tokens


def measure_drift(model: MaskTransformer, batch: int) -> dict:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        0, config.codebook_size, (batch, config.grid_size, config.grid_size), generator=generator
    )
    tokens[torch.rand(tokens.shape, generator=generator) < 0.6] = config.mask_token_id
    class_ids = torch.arange(batch) % config.num_classes
    with torch.no_grad():
        exact = model(tokens, class_ids)
        with autocast_for("bf16"):
            low = model(tokens, class_ids).float()
    return {
        "logits_relative_l2": float((low - exact).norm() / exact.norm()),
        "logits_max_abs_diff": float((low - exact).abs().max()),
        "logits_std": float(exact.std()),
        "argmax_agreement": float((low.argmax(-1) == exact.argmax(-1)).float().mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small preset, batches 1 and 4 (smoke test)")
    parser.add_argument("--preset", default=None, help="transformer preset (default maskgit-imagenet256)")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=None, help="sampler batch sizes (default 1 16)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved forward/matmul repetitions")
    parser.add_argument(
        "--forward-only", action="store_true", help="only the forward-vs-matmul rows (no sampler rows)"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=("fp32", "bf16"),
        help="default fp32 and bf16; bf16 is left out where the machine has no bf16 kernels "
        "(it would time torch's scalar fallback, tens of times slower than fp32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice). On a shared machine whose load exceeds its cores, "
        "1 thread avoids OpenMP barrier stalls that otherwise dominate the elementwise ops",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("small" if args.quick else "maskgit-imagenet256")
    batches = args.batches or ([1, 4] if args.quick else [1, 16])
    torch.manual_seed(0)
    model = MaskTransformer(PRESETS[preset]).eval()
    print(
        f"preset {preset}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
        f"{torch.get_num_threads()} threads"
    )

    bf16_fast = bf16_kernels_available("cpu")
    precisions = args.precisions or (["fp32", "bf16"] if bf16_fast else ["fp32"])
    machine = f"{cpu_model()}, CPU flags {cpu_flags() or 'none'}, bf16 kernels {'yes' if bf16_fast else 'NO'}"
    print(machine)
    forward_rows = []
    for precision in precisions:
        row = measure_forward(model, max(batches), precision, args.repeats)
        forward_rows.append({"preset": preset, **row})
        print(row)
    suffix = "_quick" if args.quick else ""  # a smoke run never overwrites the full results
    forward_record = write_result(
        f"sampler_forward{suffix}",
        forward_rows,
        notes=f"{machine}. Forward over all positions (sampler step 0) vs the same GEMMs as plain "
        "torch.mm/bmm in the same precision, interleaved; goals: fp32 fraction_of_matmul >= 0.9, "
        "bf16 >= 0.6: "
        + ", ".join(f"{row['precision']} {row['fraction_of_matmul']:.2f}" for row in forward_rows)
        + ("" if bf16_fast else "; bf16 not measured: no bf16 kernels on this CPU"),
    )
    if args.forward_only:
        return {"forward": forward_record}

    sampler_rows, sampled = [], {}
    sample(model, [0], steps=1, seeds=[0])  # warm-up
    for batch in batches:
        for cfg in (False, True):
            for precision in precisions:
                row, tokens = measure_sampler(model, batch, precision, cfg, args.steps)
                sampled[(batch, cfg, precision)] = tokens
                row["token_agreement_with_fp32"] = (
                    float((tokens == sampled[(batch, cfg, "fp32")]).float().mean())
                    if precision == "bf16"
                    else 1.0
                )
                sampler_rows.append({"preset": preset, "steps": args.steps, **row})
                print(sampler_rows[-1])
    speedups = []
    for batch in batches:
        for cfg in (False, True):
            if not {"fp32", "bf16"} <= set(precisions):
                break
            fp32, bf16 = (
                next(r for r in sampler_rows if (r["batch"], r["cfg"], r["precision"]) == (batch, cfg, p))
                for p in ("fp32", "bf16")
            )
            speedups.append(f"batch {batch} cfg {cfg}: {bf16['images_per_s'] / fp32['images_per_s']:.2f}x")
    drift = measure_drift(model, min(8, max(batches))) if "bf16" in precisions else None
    notes = (
        f"{machine}. bf16 autocast vs fp32 sampler images/s (goal >= 1.8x): "
        + ("; ".join(speedups) or "not measured")
        + f". bf16 drift on one forward: {drift}. Random weights: drift of a trained model may differ. "
        f"{torch.get_num_threads()} torch threads; load_1m is the machine's 1-minute load average."
    )
    record = write_result(f"sampler{suffix}", sampler_rows, notes=notes)
    return {"forward": forward_record, "sampler": record, "drift": drift}


if __name__ == "__main__":
    main()
