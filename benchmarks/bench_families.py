"""Forward and sampler speed of the released transformer sizes of both families, side by side.

Claims measured (issue #14, item 6), in one run on one machine:

* forward time of one all-positions pass at batch `--batch` (default 4) for every released size: v1
  (`maskgit-imagenet256`, `maskgit-imagenet512`) and v2 Halton (256 px tiny / small / base, 384 px
  small / base / large), with its GFLOP/s from the model's shapes;
* sampler images/s at batch 1 with each family's released sampling settings (v1: confidence order,
  arccos, linear CFG ramp; v2: Halton order, constant CFG, so both halves run from the first step),
  shortened to `--steps` steps (default 8) so the 480 M model fits in a few minutes of CPU; forward rows
  per image (CFG halves counted) are reported next to it, and the time per forward row, which does not
  depend on the step count;
* fp32 always; bf16 autocast where the CPU has bf16 kernels (AVX512-BF16 or AMX) or on CUDA.

* one training step (forward, backward, AdamW) of the quickstart's CPU-sized presets of each family,
  transformer and tokenizer, at batch 32: what decides whether `quickstart --family v2` trains as fast.

The tokenizers' encode / decode rows (VQGAN f16-1024 and LlamaGen VQ-16) are in `bench_tokenizer`.
Weights are random: speed does not depend on them. `--quick` measures the smallest size of each family.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from benchmarks.bench_sampler import forward_flops
from benchmarks.common import autocast_for, bf16_kernels_available, cpu_flags, cpu_model, sync, write_result
from tokenizer.families import build_tokenizer, tokenizer_preset
from transformer import build_transformer, masked_token_loss, sample
from transformer.families import TRANSFORMER_PRESETS, reference_sampling

RELEASED = (
    "maskgit-imagenet256",
    "maskgit-imagenet512",
    "halton-imagenet256-tiny",
    "halton-imagenet256-small",
    "halton-imagenet256-base",
    "halton-imagenet384-small",
    "halton-imagenet384-base",
    "halton-imagenet384-large",
)
QUICK = ("maskgit-imagenet256", "halton-imagenet256-tiny")
# The quickstart's presets of each family: (transformer, tokenizer).
QUICKSTART_PRESETS = {"v1": ("tiny", "tiny-f4"), "v2": ("halton-tiny", "llamagen-tiny-f4")}


def forward_gflops(config, batch: int) -> float:
    """GFLOPs (2 × multiply-adds) of one all-positions forward: the linear layers, attention and head."""
    s, n, d = config.sequence_length, config.num_tokens, config.hidden_size
    if config.family == "halton":
        w, f = config.attention_width, config.ffn_size
        per_layer = 2 * s * d * 3 * w + 2 * s * w * d + 2 * 3 * s * d * f + 2 * 2 * s * s * w
        per_layer += 2 * d * 6 * d  # adaLN modulation, once per sample
        head = 2 * n * d * config.codebook_size
        return batch * (config.depth * per_layer + head) / 1e9
    return forward_flops(config, batch, head_positions=n) / 1e9  # v1: the sampler benchmark's count


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_forward(model, batch: int, precision: str, repeats: int, device: torch.device) -> dict:
    config = model.config
    tokens = torch.full((batch, config.grid_size, config.grid_size), config.mask_token_id, device=device)
    class_ids = torch.zeros(batch, dtype=torch.long, device=device)

    def forward() -> None:
        with torch.no_grad(), autocast_for(precision, device.type):
            model(tokens, class_ids)
        sync(device)

    seconds = median_seconds(forward, repeats)
    return {"forward_ms": 1e3 * seconds, "forward_gflops_per_s": forward_gflops(config, batch) / seconds}


def measure_sampler(model, precision: str, steps: int, device: torch.device) -> dict:
    settings = dataclasses.replace(reference_sampling(model.config), steps=steps)
    rows = [0]

    def count_rows(_module, args, _kwargs=None):
        rows[0] += args[0].shape[0]

    hook = model.register_forward_pre_hook(count_rows)
    try:
        sample(model, [0], seeds=[0], **dataclasses.replace(settings, steps=1).as_kwargs())  # warm-up
        rows[0] = 0
        start = time.perf_counter()
        with autocast_for(precision, device.type):
            sample(model, [1], seeds=[1], **settings.as_kwargs())
        sync(device)
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    return {
        "order": settings.order,
        "cfg": f"{settings.cfg_schedule} {settings.cfg_weight:g}",
        "steps": steps,
        "images_per_s": 1 / seconds,
        "forward_rows_per_image": rows[0],
        "ms_per_forward_row": 1e3 * seconds / rows[0],
    }


def transformer_step_seconds(name: str, batch: int, repeats: int) -> float:
    """Median seconds of one masked-token-loss AdamW step of preset `name` (dropout off)."""
    torch.manual_seed(0)
    config = dataclasses.replace(TRANSFORMER_PRESETS[name], dropout=0.0)
    model = build_transformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    codes = torch.randint(0, config.codebook_size, (batch, config.grid_size, config.grid_size))
    labels = torch.randint(0, config.num_classes, (batch,))

    def step():
        loss = masked_token_loss(model, codes, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats)


def tokenizer_step_seconds(name: str, batch: int, repeats: int) -> float:
    """Median seconds of one L1 + quantizer-loss AdamW step of tokenizer preset `name` on 32 px images."""
    torch.manual_seed(0)
    model = build_tokenizer(tokenizer_preset(name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, 32, 32) * 2 - 1

    def step():
        out = model(images)
        loss = (out.reconstruction - images).abs().mean() + out.quantizer_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats)


def measure_training_steps(batch: int, repeats: int) -> list[dict]:
    """Milliseconds per AdamW step of each family's quickstart transformer and tokenizer, same sizes."""
    rows = []
    for family, (transformer_name, tokenizer_name) in QUICKSTART_PRESETS.items():
        rows.append(
            {
                "family": family,
                "transformer": transformer_name,
                "transformer_step_ms": 1e3 * transformer_step_seconds(transformer_name, batch, repeats),
                "tokenizer": tokenizer_name,
                "tokenizer_step_ms": 1e3 * tokenizer_step_seconds(tokenizer_name, batch, repeats),
                "batch": batch,
                "load_1m": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (smoke test)")
    parser.add_argument("--presets", nargs="+", default=None, choices=sorted(TRANSFORMER_PRESETS))
    parser.add_argument("--batch", type=int, default=4, help="batch of the forward rows")
    parser.add_argument("--steps", type=int, default=8, help="sampler steps (the released defaults are 8-32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per row (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16_fast = bf16_kernels_available(device.type)
    precisions = ["fp32", "bf16"] if bf16_fast else ["fp32"]
    machine = (
        f"{cpu_model()}, CPU flags {cpu_flags() or 'none'}, bf16 kernels {'yes' if bf16_fast else 'NO'}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )
    print(machine)
    training = write_result(
        f"families_training{'_quick' if args.quick else ''}",
        measure_training_steps(32, 5 if args.quick else 20),
        notes=f"{machine}. Median seconds of one AdamW step (forward, backward, update) at batch 32 of the "
        "quickstart presets of each family (transformer: masked-token loss on 8x8 grids; tokenizer: "
        "L1 + quantizer loss on 32 px images), dropout off, in this process.",
    )
    rows = []
    for name in args.presets or (QUICK if args.quick else RELEASED):
        torch.manual_seed(0)
        model = build_transformer(TRANSFORMER_PRESETS[name]).to(device).eval()
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        for precision in precisions:
            row = {
                "preset": name,
                "family": model.config.family,
                "params_m": round(parameters, 1),
                "grid": f"{model.config.grid_size}x{model.config.grid_size}",
                "precision": precision,
                "batch": args.batch,
                **measure_forward(model, args.batch, precision, args.repeats, device),
                **measure_sampler(model, precision, args.steps, device),
                "load_1m": os.getloadavg()[0],
            }
            rows.append(row)
            print(row, flush=True)
        del model
    notes = (
        f"{machine}. Random weights. Forward: one pass over all positions at batch {args.batch}, median "
        f"of {args.repeats}. Sampler: batch 1, {args.steps} steps, each family's released sampling "
        "settings; forward_rows_per_image counts the CFG halves (v2 runs both from the first step)."
        + ("" if bf16_fast else " bf16 not measured: no bf16 kernels on this CPU.")
    )
    suffix = "_quick" if args.quick else ""
    return {"training": training, "inference": write_result(f"families{suffix}", rows, notes=notes)}


if __name__ == "__main__":
    main()
