"""Benchmark: VQGAN encode / decode speed against the reference computation, same weights, same run.

Claim (issue #16 item 1): our tokenizer encodes and decodes >= 1.3x as fast as the reference in
fp32 and >= 3x in bf16, where the reference is `benchmarks.taming_baseline.TamingVQGAN` (taming's
modules as the reference runs them: fp32, NCHW, GroupNorm modules, bmm attention) loaded with the
same state dict. The `imagenet-f16-1024` preset (72.1M parameters, random initialisation: speed does
not depend on the weights) at 256 px, batch 8, on real Fashion-MNIST images resized to 256 px.

Variants, timed round-robin (A B C A B C ...) so that load changes on a shared machine hit all
alike; each cell reports the median over `--repeats` rounds of wall time and of process CPU time
(the CPU-time ratio is the steadier one when other processes compete for the cores):

* `baseline`: the plain reference re-statement, fp32;
* `ours`: `tokenizer.vqgan.VQGAN` as shipped (NCHW, fused attention, one swish kernel);
* `ours-channels-last`: ours with NHWC weights and maps, a lever measured but off by default (no
  faster at batch 8 on the measured AVX2 CPU, and oneDNN's NHWC results then depend on the batch size
  in the last bit, which breaks batch-independent decoding);
* `ours-compiled` (`--compile`, opt-in): `torch.compile` of the encoder / decoder; its one-time
  compile cost is reported next to the per-batch saving;
* bf16 rows (autocast, nearest-code search in fp32) when the machine has bf16 convolution and
  matmul kernels (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` on CPU, any CUDA GPU). Without
  them (e.g. AVX2-only CPUs) torch falls back to scalar bf16 loops tens of times slower than fp32;
  a small probe (64 px, batch 1) then records that slowdown instead of a full-size bf16 run.

Extra rows: the mid-block attention alone (fused `scaled_dot_product_attention` vs the reference's
bmm-softmax-bmm) and, when `tokenizer.llamagen` is importable, the v2 LlamaGen VQ-16 tokenizer with
its NCHW weights vs channels-last weights.

Run: `python -m benchmarks.bench_tokenizer [--quick] [--batch 8] [--repeats 3] [--threads N]
[--compile]`. `--quick` is a smoke run (64 px, batch 1, one round) written to `tokenizer_quick.json`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import autocast_for, bf16_kernels_available, cpu_flags, cpu_model, sync, write_result
from benchmarks.taming_baseline import AttnBlock as ReferenceAttnBlock
from benchmarks.taming_baseline import TamingVQGAN
from tokenizer.config import preset
from tokenizer.vqgan import VQGAN, AttnBlock

PRESET = "imagenet-f16-1024"


def input_images(batch: int, size: int) -> torch.Tensor:
    """(batch, 3, size, size) in [-1, 1]: Fashion-MNIST when available, else seeded random pixels."""
    try:
        from demo.example_data import load_fashion_mnist, to_rgb

        images, _ = load_fashion_mnist("test")
        pixels = to_rgb(images[:batch], size=size)
    except FileNotFoundError:
        pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def round_robin(
    functions: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per call of each function, timed A B C A B C ... after one warm-up each."""
    for function in functions.values():
        function()
    wall: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            sync(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            function()
            sync(device)
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {"wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name])}
        for name in functions
    }


def vqgan_calls(model: VQGAN, images: torch.Tensor, indices: torch.Tensor, channels_last: bool):
    """encode / decode closures; `channels_last=True` runs ours on NHWC weights and maps (the lever)."""
    if not channels_last:
        return (lambda: model.encode_to_indices(images)), (lambda: model.decode_from_indices(indices))
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def encode():
        return model.quantize.nearest_codes(model.quant_conv(model.encoder(images)))

    @torch.no_grad()
    def decode():
        quantized = model.quantize.lookup(indices).contiguous(memory_format=torch.channels_last)
        return model.decoder(model.post_quant_conv(quantized))

    return encode, decode


def compiled_calls(model: VQGAN, images: torch.Tensor, indices: torch.Tensor) -> tuple[tuple, float]:
    """encode / decode through `torch.compile`d encoder and decoder, and the compile (first-call) seconds."""
    encoder, decoder = torch.compile(model.encoder), torch.compile(model.decoder)
    channels_last = images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def encode():
        return model.quantize.nearest_codes(model.quant_conv(encoder(channels_last)))

    @torch.no_grad()
    def decode():
        quantized = model.quantize.lookup(indices).contiguous(memory_format=torch.channels_last)
        return decoder(model.post_quant_conv(quantized))

    start = time.perf_counter()
    encode(), decode()
    return (encode, decode), time.perf_counter() - start


def measure_vqgan(
    args, device: torch.device, precision: str, size: int, batch: int, repeats: int
) -> list[dict]:
    torch.manual_seed(0)
    model = VQGAN(preset(PRESET)).to(device).eval()
    baseline = TamingVQGAN(preset(PRESET)).to(device).eval()
    baseline.load_state_dict(model.state_dict())
    images = input_images(batch, size).to(device)
    indices = baseline.encode_to_indices(images)
    encode_ours, decode_ours = vqgan_calls(model, images, indices, channels_last=False)
    encode_nhwc, decode_nhwc = vqgan_calls(model, images, indices, channels_last=True)
    encoders = {
        "baseline": lambda: baseline.encode_to_indices(images),
        "ours": encode_ours,
        "ours-channels-last": encode_nhwc,
    }
    decoders = {
        "baseline": lambda: baseline.decode_from_indices(indices),
        "ours": decode_ours,
        "ours-channels-last": decode_nhwc,
    }
    compile_seconds = None
    if args.compile:
        with autocast_for(precision, device.type):
            (encoders["ours-compiled"], decoders["ours-compiled"]), compile_seconds = compiled_calls(
                model, images, indices
            )
    rows = []
    for operation, functions in (("encode", encoders), ("decode", decoders)):
        with autocast_for(precision, device.type):
            timings = round_robin(functions, repeats, device)
        reference = timings["baseline"]
        for name, timing in timings.items():
            row = {
                "model": PRESET,
                "operation": operation,
                "variant": name,
                "precision": precision,
                "size": size,
                "batch": batch,
                "images_per_s": batch / timing["wall_s"],
                "speedup_wall": reference["wall_s"] / timing["wall_s"],
                "speedup_cpu": reference["cpu_s"] / timing["cpu_s"],
                "wall_s": timing["wall_s"],
                "cpu_s": timing["cpu_s"],
                "load_1m": os.getloadavg()[0],
            }
            if name == "ours-compiled":
                row["compile_s"] = compile_seconds
            rows.append(row)
            print(row, flush=True)
    # Parity of the variants on these real images (fp32 only: bf16 is compared to fp32 elsewhere).
    if precision == "fp32":
        agreement = float((encode_ours() == indices).float().mean())
        decoded, expected = decode_ours(), baseline.decode_from_indices(indices)
        for row in rows:
            if row["variant"] == "ours":
                row["index_agreement"] = agreement
                row["decode_max_abs_diff"] = float((decoded - expected).abs().max())
    return rows


def measure_attention(device: torch.device, batch: int, repeats: int) -> list[dict]:
    """The 512-channel attention block on a 16×16 map: fused SDPA (ours) vs bmm-softmax-bmm (reference)."""
    torch.manual_seed(0)
    ours = AttnBlock(512, 32).to(device).eval()
    reference = ReferenceAttnBlock(512, 32).to(device).eval()
    reference.load_state_dict(ours.state_dict())
    ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 512, 16, 16, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        timings = round_robin(
            {
                "baseline": lambda: reference(x),
                "ours": lambda: ours(x),
                "ours-channels-last": lambda: ours_cl(x_cl),
            },
            repeats,
            device,
        )
        diff = float((ours_cl(x_cl) - reference(x)).abs().max())
    return [
        {
            "model": "AttnBlock(512) 16x16",
            "operation": "attention",
            "variant": name,
            "precision": "fp32",
            "batch": batch,
            "speedup_wall": timings["baseline"]["wall_s"] / t["wall_s"],
            "speedup_cpu": timings["baseline"]["cpu_s"] / t["cpu_s"],
            "wall_s": t["wall_s"],
            "cpu_s": t["cpu_s"],
            "max_abs_diff": diff,
        }
        for name, t in timings.items()
    ]


def measure_llamagen(device: torch.device, size: int, batch: int, repeats: int) -> list[dict]:
    """The v2 tokenizer (LlamaGen VQ-16) as it ships vs with channels-last weights and inputs."""
    try:
        from tokenizer.config import LLAMAGEN_PRESETS
        from tokenizer.llamagen import LlamaGenVQ
    except ImportError:
        return []
    torch.manual_seed(0)
    model = LlamaGenVQ(LLAMAGEN_PRESETS["llamagen-vq16"]).to(device).eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = input_images(batch, size).to(device)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    indices = model.encode_to_indices(images)
    rows = []
    for operation, functions in (
        (
            "encode",
            {
                "as-shipped": lambda: model.encode_to_indices(images),
                "channels-last": lambda: model_cl.encode_to_indices(images_cl),
            },
        ),
        (
            "decode",
            {
                "as-shipped": lambda: model.decode_from_indices(indices),
                "channels-last": lambda: model_cl.decode_from_indices(indices),
            },
        ),
    ):
        timings = round_robin(functions, repeats, device)
        for name, t in timings.items():
            rows.append(
                {
                    "model": "llamagen-vq16",
                    "operation": operation,
                    "variant": name,
                    "precision": "fp32",
                    "size": size,
                    "batch": batch,
                    "images_per_s": batch / t["wall_s"],
                    "speedup_wall": timings["as-shipped"]["wall_s"] / t["wall_s"],
                    "speedup_cpu": timings["as-shipped"]["cpu_s"] / t["cpu_s"],
                    "wall_s": t["wall_s"],
                    "cpu_s": t["cpu_s"],
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 1, one round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin rounds (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (opt-in; slow start)")
    parser.add_argument("--skip-llamagen", action="store_true", help="do not measure the v2 tokenizer")
    parser.add_argument("--llamagen-batch", type=int, default=2, help="batch of the v2 tokenizer rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size, batch, repeats = (64, 1, 1) if args.quick else (args.size, args.batch, args.repeats)
    bf16_fast = bf16_kernels_available(device.type)
    print(
        f"{cpu_model()}; flags: {cpu_flags()}; bf16 kernels: {bf16_fast}; threads {torch.get_num_threads()}"
    )

    rows = measure_vqgan(args, device, "fp32", size, batch, repeats)
    if bf16_fast:
        rows += measure_vqgan(args, device, "bf16", size, batch, repeats)
    else:  # record how slow bf16 is here, on a shape small enough to finish
        probe_precisions = ("bf16",) if (size, batch) == (64, 1) else ("fp32", "bf16")
        for precision in probe_precisions:
            rows += [dict(row, probe=True) for row in measure_vqgan(args, device, precision, 64, 1, 1)]
    rows += measure_attention(device, batch, max(repeats, 3))
    if not args.skip_llamagen:
        rows += measure_llamagen(device, size, min(batch, args.llamagen_batch), repeats)

    def ratio(operation: str, precision: str, variant: str = "ours", key: str = "speedup_wall") -> str:
        match = [
            r
            for r in rows
            if (r["operation"], r["precision"], r["variant"]) == (operation, precision, variant)
            and r.get("model") == PRESET
            and not r.get("probe")
        ]
        return f"{match[0][key]:.2f}x" if match else "n/a"

    notes = (
        f"{cpu_model()}; CPU flags {cpu_flags()}; bf16 kernels {'yes' if bf16_fast else 'NO'}; device "
        f"{device.type}; torch threads {torch.get_num_threads()}. {PRESET}, {size}px, batch {batch}, "
        f"median of {repeats} round-robin rounds. Goals: fp32 >= 1.3x, bf16 >= 3x the fp32 reference. "
        f"fp32 ours/baseline: encode {ratio('encode', 'fp32')} wall, "
        f"{ratio('encode', 'fp32', key='speedup_cpu')} CPU time; decode {ratio('decode', 'fp32')} wall, "
        f"{ratio('decode', 'fp32', key='speedup_cpu')} CPU time."
        + ("" if bf16_fast else " bf16: this machine has no bf16 kernels; see the 64 px probe rows.")
    )
    columns = ["model", "operation", "variant", "precision", "size", "batch", "images_per_s", "speedup_wall"]
    columns += ["speedup_cpu", "wall_s", "cpu_s", "load_1m", "index_agreement", "compile_s", "probe"]
    return write_result("tokenizer_quick" if args.quick else "tokenizer", rows, notes=notes, columns=columns)


if __name__ == "__main__":
    main()
