"""Served vs offline sampling: images/s and p50/p99 latency at concurrency 1, 4 and 16.

Claim (issue #7): batching requests by images lets the HTTP service keep up with the sampler called
in-process: served images/s ≥ 0.8× offline at concurrency 16.

Served: `start_server` in a local Ray; `concurrency` client threads each send one-image
`POST /v1/generate` requests (PNG output) back to back. Offline: the same library calls
(`SamplerEngine.run`: `sample()`, VQGAN decode, PNG encode) in this process, in batches of
min(concurrency, max_batch_images) images, the batch a full server queue would form. Both use the
same torch thread count (`--threads`; Ray gives the replica `num_cpus = threads`). Models are
random-init presets (throughput does not depend on the weights).

    python -m benchmarks.bench_serve [--quick] [--preset tiny|small] [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import write_result

CONCURRENCY = (1, 4, 16)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def make_models(root: Path, preset: str, steps: int) -> tuple[str, str]:
    """Random-init VQGAN (tiny-f4, 32 px) and transformer preset, saved in our formats."""
    import dataclasses

    import torch

    from tokenizer import VQGAN, save_vqgan
    from tokenizer import preset as vqgan_preset
    from transformer import PRESETS, MaskTransformer, SamplingConfig, save_transformer

    torch.manual_seed(0)
    vqgan = VQGAN(vqgan_preset("tiny-f4")).eval()
    grid = vqgan.config.resolution // vqgan.config.downsample_factor
    config = dataclasses.replace(PRESETS[preset], codebook_size=vqgan.config.codebook_size, grid_size=grid)
    sampling = SamplingConfig(steps=steps, gumbel_temperature=1.0, cfg_weight=1.0)
    save_vqgan(vqgan, root / "tokenizer")
    save_transformer(MaskTransformer(config).eval(), root / "transformer", sampling=sampling)
    return str(root / "transformer"), str(root / "tokenizer")


def measure_offline(
    transformer: str, tokenizer: str, concurrency: int, requests: int, max_batch: int
) -> dict:
    """In-process `SamplerEngine.run` in batches of min(concurrency, max_batch) one-image jobs."""
    from jobs.serve.engine import SampleJob, SamplerEngine
    from transformer import load_sampling_config

    engine = SamplerEngine(transformer, tokenizer, device="cpu")
    sampling = load_sampling_config(transformer)
    batch = min(concurrency, max_batch)

    def jobs(start: int, count: int) -> list[SampleJob]:
        return [SampleJob("generate", (i % 10,), (i,), sampling, "png") for i in range(start, start + count)]

    engine.run(jobs(0, batch))  # warm-up
    latencies, done = [], 0
    start = time.perf_counter()
    while done < requests:
        count = min(batch, requests - done)
        began = time.perf_counter()
        engine.run(jobs(done, count))
        latencies += [time.perf_counter() - began] * count  # every request in a batch waits for all of it
        done += count
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": requests / elapsed,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
    }


def measure_served(url: str, concurrency: int, requests_count: int) -> dict:
    """`concurrency` client threads sending one-image requests back to back."""
    import requests

    local = threading.local()

    def post(index: int) -> tuple[float, int]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        began = time.perf_counter()
        reply = session.post(f"{url}/v1/generate", json={"class_id": index % 10, "seed": index}, timeout=600)
        reply.raise_for_status()
        return time.perf_counter() - began, reply.json()["batch_images"]

    with ThreadPoolExecutor(concurrency) as pool:  # warm-up: one round at this concurrency
        list(pool.map(post, range(concurrency)))
        start = time.perf_counter()
        results = list(pool.map(post, range(requests_count)))
        elapsed = time.perf_counter() - start
    latencies = [latency for latency, _ in results]
    return {
        "images_per_s": requests_count / elapsed,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
        "mean_batch": statistics.fmean(batch for _, batch in results),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"), help="transformer preset")
    parser.add_argument("--steps", type=int, default=8, help="decoding steps per image")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, offline and per replica")
    parser.add_argument("--max-batch-images", type=int, default=16)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    import torch

    from jobs.serve.app import start_server, stop_server
    from jobs.serve.schema import ServeOptions

    torch.set_num_threads(args.threads)
    per_level = {1: 12, 4: 32, 16: 96} if args.quick else {1: 40, 4: 128, 16: 384}
    root = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ray_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    rows = []
    try:
        transformer, tokenizer = make_models(root, args.preset, args.steps)
        ray.init(
            address="local",
            num_cpus=max(2, args.threads),
            include_dashboard=False,
            _temp_dir=ray_dir,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        options = ServeOptions(
            transformer=transformer,
            tokenizer=tokenizer,
            port=_free_port(),
            num_cpus=args.threads,
            device="cpu",
            max_batch_images=args.max_batch_images,
            max_images_per_request=1,
            batch_wait_timeout_s=args.batch_wait_timeout_s,
        )
        url = start_server(options)
        try:
            for c in CONCURRENCY:  # interleaved, so both sides of a row see the same machine load
                offline = measure_offline(transformer, tokenizer, c, per_level[c], args.max_batch_images)
                served = measure_served(url, c, per_level[c])
                rows.append(
                    {
                        "concurrency": c,
                        "requests": per_level[c],
                        "offline_batch": min(c, args.max_batch_images),
                        "served_mean_batch": served["mean_batch"],
                        "offline_img_s": offline["images_per_s"],
                        "served_img_s": served["images_per_s"],
                        "served_over_offline": served["images_per_s"] / offline["images_per_s"],
                        "offline_p50_s": offline["p50_s"],
                        "offline_p99_s": offline["p99_s"],
                        "served_p50_s": served["p50_s"],
                        "served_p99_s": served["p99_s"],
                    }
                )
        finally:
            stop_server()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
    notes = (
        f"Preset {args.preset} transformer + tiny-f4 VQGAN (32 px, 8x8 tokens), {args.steps} steps, "
        f"one image per request, PNG output, {args.threads} torch thread(s), max_batch_images "
        f"{args.max_batch_images}, batch wait {args.batch_wait_timeout_s} s. Offline = SamplerEngine.run "
        "(sample + decode + PNG) in-process with batches of min(concurrency, max_batch_images); its latency "
        "is the batch time. Goal: served_over_offline >= 0.8 at concurrency 16."
    )
    return write_result("serve", rows, notes=notes)


if __name__ == "__main__":
    main()
