"""Mixed traffic on the Serve app: continuous (step-level) batching next to merge batching.

Claim (issue #15): with requests that differ in their knobs — 4 to 32 steps, guidance on and off,
1 to 4 images — step-level continuous batching keeps the HTTP service near the sampler called
in-process (served images/s ≥ 0.9× offline) and keeps tail latency near a request's latency alone
(p99 ≤ 2× single-request latency), where merging only identical knobs cannot share forward passes.

Both applications run side by side in one local Ray on 127.0.0.1 (`batching="continuous"` and
`batching="merge"`, same models, one sampler replica each with `--threads` torch threads); the levels
alternate between them so both see the same machine. Per level, `concurrency` client threads send
the same seeded list of `POST /v1/generate` requests (PNG output) back to back.

* offline: the same requests in this process with the same thread count and the same budget of
  rows per forward pass: the continuous batcher with the whole list queued (decode and PNG encoding
  included, as served). For reference, `offline_grouped_img_s` is `SamplerEngine.run` on the whole
  list at once (one `sample()` call per group of equal knobs, as large as the list allows: no
  budget, and it needs every request in advance).
* `little_bound_s`: by Little's law no server can answer `concurrency` clients with a mean latency
  below concurrency × images per request ÷ offline images/s; where forward passes cost about the
  same per row whatever the batch (a CPU), that bound, not the batching, sets the latency.
* single-request latency: every distinct (steps, guidance, images) kind of the list sent alone, one
  at a time, to the same application. `p99 / alone` is the p99 latency over the p99 of those alone
  latencies; `p99 slowdown` is the p99 over requests of latency ÷ the same kind's latency alone.

    python -m benchmarks.bench_serve_mixed [--quick] [--preset tiny|small] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_serve import _free_port, _percentile, make_models
from benchmarks.common import write_result

STEPS = (4, 8, 12, 16, 24, 32)
CFG = (0.0, 2.0)
MODES = ("continuous", "merge")


def workload(count: int, seed: int) -> list[dict]:
    """`count` request bodies with mixed steps, guidance and image counts (seeded)."""
    rng = random.Random(seed)
    bodies = []
    for index in range(count):
        images = rng.randint(1, 4)
        bodies.append(
            {
                "class_ids": [rng.randrange(10) for _ in range(images)],
                "seed": index,
                "steps": rng.choice(STEPS),
                "cfg_weight": rng.choice(CFG),
            }
        )
    return bodies


def kind(body: dict) -> tuple:
    return body["steps"], body["cfg_weight"] > 0, len(body["class_ids"])


def _jobs(bodies: list[dict], defaults):
    from dataclasses import replace

    from jobs.serve.engine import SampleJob

    jobs = []
    for body in bodies:
        sampling = replace(defaults, steps=body["steps"], cfg_weight=body["cfg_weight"])
        seeds = tuple(body["seed"] + i for i in range(len(body["class_ids"])))
        jobs.append(SampleJob("generate", tuple(body["class_ids"]), seeds, sampling, "png"))
    return jobs


def measure_offline(engine, bodies: list[dict], max_rows: int) -> dict:
    """Images/s in-process: the continuous batcher with everything queued, and one merge call."""
    from transformer import SamplingConfig

    defaults = SamplingConfig.from_dict(engine.info()["sampling_defaults"])
    jobs = _jobs(bodies, defaults)
    images = sum(job.num_images for job in jobs)
    engine.run(jobs[:4])  # warm-up
    began = time.perf_counter()
    batcher = engine.batcher(max_rows)
    tickets = [batcher.submit(engine.request(job)) for job in jobs]
    batcher.run_until_idle()
    for job, ticket in zip(jobs, tickets):
        engine.job_output(job, ticket.outcome)  # PNG encoding, as served
    continuous = images / (time.perf_counter() - began)
    began = time.perf_counter()
    engine.run(jobs)
    merged = images / (time.perf_counter() - began)
    return {
        "continuous": continuous,
        "merge": merged,
        "rows_per_forward": batcher.forward_rows / batcher.forwards,
    }


def measure_served(url: str, bodies: list[dict], concurrency: int) -> dict:
    """`concurrency` client threads sending `bodies` back to back; per-request latency and batch."""
    import requests

    local = threading.local()

    def post(body: dict) -> tuple[float, int]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        began = time.perf_counter()
        reply = session.post(f"{url}/v1/generate", json=body, timeout=600)
        reply.raise_for_status()
        return time.perf_counter() - began, reply.json()["batch_images"]

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies[:concurrency]))  # warm-up round
        start = time.perf_counter()
        results = list(pool.map(post, bodies))
        elapsed = time.perf_counter() - start
    return {
        "images_per_s": sum(len(b["class_ids"]) for b in bodies) / elapsed,
        "latencies": [latency for latency, _ in results],
        "mean_batch": statistics.fmean(batch for _, batch in results),
    }


def measure_alone(url: str, bodies: list[dict]) -> dict[tuple, float]:
    """Latency of each distinct kind of request sent alone (once, after the warm-up)."""
    import requests

    alone = {}
    with requests.Session() as session:
        for body in bodies:
            if kind(body) in alone:
                continue
            began = time.perf_counter()
            session.post(f"{url}/v1/generate", json=body, timeout=600).raise_for_status()
            alone[kind(body)] = time.perf_counter() - began
    return alone


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level (about 2 minutes)")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"), help="transformer preset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, offline and per replica")
    parser.add_argument("--max-batch-images", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    import torch
    from ray import serve

    from jobs.serve.app import build_app, start_server, stop_server
    from jobs.serve.engine import SamplerEngine
    from jobs.serve.schema import ServeOptions

    torch.set_num_threads(args.threads)
    per_level = {c: (2 if args.quick else 6) * c for c in args.concurrency}
    root = Path(tempfile.mkdtemp(prefix="bench_serve_mixed_"))
    ray_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    rows = []
    try:
        transformer, tokenizer = make_models(root, args.preset, 8)
        ray.init(
            address="local", num_cpus=max(2, 2 * args.threads), include_dashboard=False, _temp_dir=ray_dir,
            logging_level=logging.WARNING, log_to_driver=False,
        )  # fmt: skip
        port = _free_port()
        urls = {}
        for mode in MODES:
            options = ServeOptions(
                transformer=transformer, tokenizer=tokenizer, port=port, num_cpus=args.threads, device="cpu",
                max_batch_images=args.max_batch_images, max_images_per_request=4, batching=mode,
                batch_wait_timeout_s=0.005, app_name=f"maskgit-{mode}", route_prefix=f"/{mode}",
            )  # fmt: skip
            if not urls:
                urls[mode] = start_server(options)
            else:
                serve.run(build_app(options), name=options.app_name, route_prefix=options.route_prefix)
                urls[mode] = f"http://{options.host}:{port}{options.route_prefix}"
        engine = SamplerEngine(transformer, tokenizer, device="cpu")
        try:
            for concurrency in args.concurrency:
                bodies = workload(per_level[concurrency], seed=concurrency)
                offline = measure_offline(engine, bodies, 2 * args.max_batch_images)
                images = sum(len(b["class_ids"]) for b in bodies)
                for mode in MODES:  # interleaved, so both see the same machine load
                    served = measure_served(urls[mode], bodies, concurrency)
                    alone = measure_alone(urls[mode], bodies)
                    latencies = served["latencies"]
                    slowdown = [lat / alone[kind(b)] for lat, b in zip(latencies, bodies)]
                    alone_p99 = _percentile([alone[kind(b)] for b in bodies], 99)
                    rows.append(
                        {
                            "batching": mode,
                            "concurrency": concurrency,
                            "requests": len(bodies),
                            "images": images,
                            "served_img_s": served["images_per_s"],
                            "offline_img_s": offline["continuous"],
                            "served_over_offline": served["images_per_s"] / offline["continuous"],
                            "p50_s": _percentile(latencies, 50),
                            "p99_s": _percentile(latencies, 99),
                            "alone_p99_s": alone_p99,
                            "p99_over_alone": _percentile(latencies, 99) / alone_p99,
                            "p99_slowdown": _percentile(slowdown, 99),
                            "little_bound_s": concurrency * images / len(bodies) / offline["continuous"],
                            "mean_batch_images": served["mean_batch"],
                            "offline_grouped_img_s": offline["merge"],
                            "offline_rows_per_forward": offline["rows_per_forward"],
                        }
                    )
        finally:
            stop_server()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
    notes = (
        f"Preset {args.preset} transformer + tiny-f4 VQGAN (32 px, 8x8 tokens), random init; requests: "
        f"steps in {STEPS}, cfg_weight in {CFG}, 1-4 images, PNG output; {args.threads} torch thread(s) per "
        f"replica and offline; max_batch_images {args.max_batch_images} (continuous: at most "
        f"{2 * args.max_batch_images} rows per forward). offline = the in-process continuous batcher "
        "with the whole list queued, same budget; offline_grouped = one merge call over the whole list. "
        "Goals: served_over_offline >= 0.9, p99_over_alone <= 2 (little_bound_s: the least mean "
        "latency any server can reach at this concurrency and offline throughput)."
    )
    return write_result("serve_mixed", rows, notes=notes)


if __name__ == "__main__":
    main()
