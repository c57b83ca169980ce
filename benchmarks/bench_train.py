"""Training throughput: our DeepSpeed step loop vs a plain PyTorch loop, and ZeRO-1/2/3 on 2 CPU workers.

Part 1 (single process): tokens/s of `jobs.train.worker.optimizer_step` on a world-size-1 DeepSpeed
engine against the reference's style of loop (torch AdamW, `clip_grad_norm_`, bf16 by
`torch.autocast`, no DeepSpeed) over the same model, objective, batch and thread count. Both live in
one process and their steps alternate (A/B, which goes first alternating too), so a shared machine's
load drifts hit both alike; 'vs plain' is the median over steps of plain time / our time. The ratio is
DeepSpeed's overhead, reported as is. On a CPU without native bf16 matmuls (no AVX512-BF16/AMX) torch
falls back to a slow bf16 GEMM, and both bf16 loops are far slower than fp32 there.

Part 2 (2 processes, gloo): the same step loop with ZeRO stages 1, 2 and 3, each worker reporting its
step time and peak resident memory (ru_maxrss). Real processes, real collectives; no Ray (it would add
its own per-worker memory to the numbers).

Run: `python -m benchmarks.bench_train [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch

from jobs.train.deepspeed_config import select_accelerator

select_accelerator()  # before deepspeed is imported: the CPU accelerator here, CUDA on a GPU machine

PRESET = "small"  # 8 layers, width 256, 8x8 grid by default; the benchmark uses a 16x16 grid
GRID, CODEBOOK, CLASSES = 16, 1024, 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _job_config(stage: int, workers: int, micro_batch: int, precision: str):
    from jobs.train.config import TrainJobConfig

    return TrainJobConfig(
        store="unused",
        out="unused",
        preset=PRESET,
        model_overrides={"grid_size": GRID, "codebook_size": CODEBOOK, "num_classes": CLASSES},
        num_workers=workers,
        zero_stage=stage,
        precision=precision,
        global_batch_size=micro_batch * workers,
        micro_batch_size=micro_batch,
        steps=10_000,
    )


def _batch(config, rank: int, step: int):
    generator = torch.Generator().manual_seed(1000 * step + rank)
    tokens = torch.randint(0, CODEBOOK, (config.micro_batch_size, GRID, GRID), generator=generator)
    labels = torch.randint(0, CLASSES, (config.micro_batch_size,), generator=generator)
    return tokens, labels


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is reset by exec, so a spawned
    worker does not report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _deepspeed_worker(rank: int, world: int, port: int, args: tuple, results) -> None:
    stage, micro_batch, steps, warmup, threads, precision = args
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(threads)
    from jobs.train.worker import (
        _quiet_worker_warnings,
        build_engine,
        init_deepspeed_distributed,
        model_config_for,
        optimizer_step,
    )

    _quiet_worker_warnings()
    init_deepspeed_distributed(use_gpu=False)
    config = _job_config(stage, world, micro_batch, precision)
    model_config = model_config_for(config)
    engine = build_engine(config, model_config)
    times = []
    for step in range(warmup + steps):
        tokens, labels = _batch(config, rank, step)
        start = time.perf_counter()
        optimizer_step(
            engine,
            tokens,
            labels,
            config=config,
            mask_token_id=model_config.mask_token_id,
            step=step,
            rank=rank,
        )
        times.append(time.perf_counter() - start)
    peak_mib = _peak_rss_mib()
    results.put((rank, sorted(times[warmup:])[len(times[warmup:]) // 2], peak_mib))
    torch.distributed.destroy_process_group()


def run_deepspeed(
    stage: int, world: int, micro_batch: int, steps: int, warmup: int, threads: int, precision: str
):
    """Median step time and peak RSS per worker of `world` real DeepSpeed processes."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(
            target=_deepspeed_worker,
            args=(rank, world, port, (stage, micro_batch, steps, warmup, threads, precision), results),
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    return max(r[1] for r in reports), [round(r[2]) for r in sorted(reports)]


def _plain_stepper(config, model_config, precision: str):
    """One step of the reference-style loop: torch AdamW, grad clipping, autocast for bf16."""
    from jobs.train.deepspeed_config import OptimizerSettings
    from transformer.model import MaskTransformer
    from transformer.objective import masked_token_loss

    torch.manual_seed(0)
    model = MaskTransformer(model_config)
    settings = OptimizerSettings()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )

    def step(tokens, labels, index: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = masked_token_loss(
                model, tokens, labels, generator=torch.Generator().manual_seed(index)
            ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()

    return step


def _ab_worker(port: int, args: tuple, results) -> None:
    """Plain loop and DeepSpeed engine in one process, steps alternating; reports medians."""
    micro_batch, steps, warmup, threads, precision = args
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    torch.set_num_threads(threads)
    from jobs.train.worker import (
        _quiet_worker_warnings,
        build_engine,
        init_deepspeed_distributed,
        model_config_for,
        optimizer_step,
    )

    _quiet_worker_warnings()
    init_deepspeed_distributed(use_gpu=False)
    config = _job_config(1, 1, micro_batch, precision)
    model_config = model_config_for(config)
    engine = build_engine(config, model_config)
    plain = _plain_stepper(config, model_config, precision)

    def ours(tokens, labels, index: int) -> None:
        mask_id = model_config.mask_token_id
        optimizer_step(engine, tokens, labels, config=config, mask_token_id=mask_id, step=index, rank=0)

    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for step in range(warmup + steps):
        tokens, labels = _batch(config, 0, step)
        order = [("plain", plain), ("ours", ours)]
        for name, fn in order if step % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn(tokens, labels, step)
            times[name].append(time.perf_counter() - start)
    plain_t, ours_t = times["plain"][warmup:], times["ours"][warmup:]
    ratios = sorted(p / o for p, o in zip(plain_t, ours_t))
    middle = len(ratios) // 2
    results.put((sorted(plain_t)[middle], sorted(ours_t)[middle], ratios[middle]))
    torch.distributed.destroy_process_group()


def run_ab(micro_batch: int, steps: int, warmup: int, threads: int, precision: str):
    """(plain median step s, ours median step s, median per-step ratio plain/ours) in a fresh process."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_ab_worker, args=(_free_port(), (micro_batch, steps, warmup, threads, precision), results)
    )
    process.start()
    report = results.get(timeout=3600)
    process.join()
    return report


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.common import write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, for a smoke run")
    args = parser.parse_args(argv)
    steps, warmup = (3, 1) if args.quick else (10, 2)
    micro_batch = 8 if args.quick else 16
    threads = os.cpu_count() or 1
    tokens_per_step = micro_batch * GRID * GRID
    rows = []
    for precision in ("fp32", "bf16"):
        plain, ours, ratio = run_ab(micro_batch, steps, warmup, threads, precision)
        rows.append(
            {
                "loop": f"plain PyTorch AdamW ({precision})",
                "workers": 1,
                "tokens/s": tokens_per_step / plain,
                "vs plain": 1.0,
                "peak RSS/worker MiB": "",
            }
        )
        rows.append(
            {
                "loop": f"ours: DeepSpeed ZeRO-1 ({precision})",
                "workers": 1,
                "tokens/s": tokens_per_step / ours,
                "vs plain": ratio,
                "peak RSS/worker MiB": "",
            }
        )
    for stage in (1, 2, 3):
        step_time, peaks = run_deepspeed(stage, 2, micro_batch, steps, warmup, max(1, threads // 2), "fp32")
        rows.append(
            {
                "loop": f"ours: DeepSpeed ZeRO-{stage} (fp32, gloo)",
                "workers": 2,
                "tokens/s": 2 * tokens_per_step / step_time,
                "vs plain": "",
                "peak RSS/worker MiB": "/".join(map(str, peaks)),
            }
        )
    from jobs.train.worker import model_config_for
    from transformer.model import MaskTransformer

    model = MaskTransformer(model_config_for(_job_config(1, 1, micro_batch, "fp32")))
    params = sum(p.numel() for p in model.parameters())
    notes = (
        f"Model: preset {PRESET!r} at a {GRID}x{GRID} grid ({params / 1e6:.1f} M parameters), "
        f"micro-batch {micro_batch}, "
        f"median of {steps} steps after {warmup} warm-up. 'vs plain' is the plain loop's step time over ours "
        "(1.0 = no overhead), the median over interleaved step pairs. Peak RSS is each 2-worker process's "
        "VmHWM (includes the Python/torch/DeepSpeed runtime); the 1-worker A/B process holds both loops, "
        f"so its memory is not reported. Load average at the end (shared machine): {os.getloadavg()[0]:.1f}."
    )
    return write_result("train", rows, notes=notes)


if __name__ == "__main__":
    main()
