"""Benchmark: the `maskgit tokenize` Ray job against a bare loop over the same encoder.

Claims under test (issue #4):
1. job images/s ÷ bare-loop images/s on the same cores ≥ 0.85 ("throughput" rows);
2. peak memory per worker is flat in the dataset size, 1k vs 20k images ("memory" rows).

Input: Fashion-MNIST train images (real, 28×28 grey written as RGB PNGs in an ImageNet-style folder
tree), resized by the job's CPU stage to the model resolution (short side + center crop). Encoders:
seeded random VQGAN presets (weights do not change the cost). The throughput rows use `small-f8` at
64 px (~45 images/s per core here), an encoder whose cost dominates the per-image work as a real
f16 VQGAN at 256 px does; the memory rows use `tiny-f4` at 32 px so that 20k images stay quick. With
the tiny encoder (~1 ms per image) the job's fixed cost (actor start-up: a worker importing torch;
planning; commit: a few seconds) dominates, and its ratio says little about the pipeline.

The bare loop does the same work in one process without Ray: for each planned shard, `prepare_shard`
(read + decode + resize) then `TokenizeBatch.encode`; nothing is written. Its torch thread count is
the faster of 1 and all cores (a loaded machine can punish multi-threading badly), and the job's
actor gets the same count. Bare runs bracket each job run (mean of before and after) because the
shared machine's load drifts; the throughput part repeats bare, job, bare, job, ... (`--repeats`,
each job between two bare runs) and reports medians. The job runs on a Ray started beforehand
(cluster start-up excluded; actor start-up, planning and the store commit included) and writes a
local Arrow store. Ratios: `ratio` end to end (the job's whole run, as `run_tokenize` times it);
`first_commit_s` the seconds from the call to the first shard commit; `steady_ratio` between the
first and the last shard commit (commit records' mtimes); `cpu_ratio` = bare CPU-s per image / job
CPU-s per image, where the job's CPU counts this process and every process of its local Ray (GCS,
raylet, workers): robust to the load, and it charges the job for all of Ray's own work.

Memory: a sampler thread reads the RSS of every Ray worker that descends from this process (other
users' Ray processes are not counted) every 0.2 s with psutil; `peak_worker_rss_mib` is the largest
per-process peak, `driver_peak_rss_mib` this process's.

Run: `python -m benchmarks.bench_tokenize_job [--quick]`. The machine is shared: numbers on 2 loaded
cores are noisy; the notes record the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.common import write_result


class RayProcessMonitor:
    """Peak RSS per process and CPU seconds of this process and its descendants (the local Ray that
    `ray.init` started here: GCS, raylet, workers), sampled every `interval_s` in a thread. Other
    users' Ray processes on a shared machine are not descendants and are not counted."""

    def __init__(self, interval_s: float = 0.2):
        import psutil

        self.interval_s = interval_s
        self.me = psutil.Process()
        self.driver_mib = 0.0
        self.workers: dict[int, float] = {}
        self._cpu_start = self._cpu_seconds()
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list:
        return [self.me, *self.me.children(recursive=True)]

    def _cpu_seconds(self) -> dict[int, float]:
        import psutil

        seconds = {}
        for process in self._tree():
            try:
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return seconds

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            self.driver_mib = max(self.driver_mib, self.me.memory_info().rss / 2**20)
            for process in self.me.children(recursive=True):
                try:
                    if "ray::" in " ".join(process.cmdline()[:1]):  # workers and actors, not GCS/raylet
                        rss = process.memory_info().rss / 2**20
                        self.workers[process.pid] = max(self.workers.get(process.pid, 0.0), rss)
                except psutil.NoSuchProcess:
                    continue
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RayProcessMonitor:
        self._cpu_start = self._cpu_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        end = self._cpu_seconds()
        self.cpu_seconds = sum(value - self._cpu_start.get(pid, 0.0) for pid, value in end.items())


class BareResult(NamedTuple):
    images_per_s: float
    cpu_s_per_1k: float  # CPU seconds (user + system) per 1,000 images


def bare_loop(
    root: str, tokenizer: str, *, resolution: int, shard_size: int, batch_size: int, threads: int
) -> BareResult:
    """Read + decode + resize + encode in one process, no Ray, torch on `threads` threads."""
    import torch

    from pipeline.sources import plan_sources, prepare_shard
    from pipeline.tokenize import TokenizeBatch

    previous = torch.get_num_threads()
    stage = TokenizeBatch(tokenizer, batch_size=batch_size, num_threads=threads)
    plan = plan_sources(root, shard_size=shard_size)
    stage.encode(np.zeros((batch_size, resolution, resolution, 3), np.uint8))  # warm-up (allocator, kernels)
    start, cpu_start, count = time.perf_counter(), time.process_time(), 0
    for task in plan.tasks:
        shard = prepare_shard(task, resolution)
        stage.encode(shard.images)
        count += len(shard.labels)
    result = BareResult(
        count / (time.perf_counter() - start), (time.process_time() - cpu_start) / count * 1000
    )
    torch.set_num_threads(previous)
    return result


def commit_times(store: Path, job_start: float) -> tuple[float, float]:
    """(steady-state images/s, seconds from `job_start` to the first commit), from the commit records'
    mtimes. The steady rate counts the images of every shard but the first over the time between the
    first and the last commit: the job's rate once actors are up, without its fixed start-up and
    commit costs."""
    import json

    records = []
    for path in (store / "_commits").glob("*.json"):
        records.append((path.stat().st_mtime, json.loads(path.read_text())["shard"]["num_samples"]))
    records.sort()
    first = records[0][0] - job_start if records else float("nan")
    if len(records) < 2 or records[-1][0] <= records[0][0]:
        return float("nan"), first
    return sum(n for _, n in records[1:]) / (records[-1][0] - records[0][0]), first


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="300 throughput images; 200 and 1,000 for memory"
    )
    parser.add_argument("--throughput-images", type=int, default=None, help="default 2,000 (quick: 300)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=None, help="default 1000 20000")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--threads-per-actor", type=int, default=None, help="default: the bare loop's")
    parser.add_argument("--bare-images", type=int, default=2000, help="images timed in each bare run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="throughput jobs, each between two bare runs (medians)"
    )
    args = parser.parse_args(argv)
    throughput_images = args.throughput_images or (300 if args.quick else 2000)
    memory_sizes = args.memory_sizes or ([200, 1000] if args.quick else [1000, 20000])
    runs = [("throughput", "small-f8", 64, throughput_images)]
    runs += [("memory", "tiny-f4", 32, size) for size in memory_sizes]

    import ray
    import torch

    from demo.example_data import load_fashion_mnist, to_rgb, write_image_folder
    from jobs.tokenize import TokenizeOptions, run_tokenize
    from tokenizer.checkpoint import save_vqgan
    from tokenizer.config import PRESETS
    from tokenizer.vqgan import VQGAN

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    images, labels = load_fashion_mnist("train")
    work_dir = tempfile.TemporaryDirectory(prefix="bench-tokenize-")  # images, tokenizers, stores
    work = Path(work_dir.name)
    roots: dict[int, str] = {}

    def image_root(size: int) -> str:
        if size not in roots:
            folder = work / f"images-{size}"
            roots[size] = str(write_image_folder(to_rgb(images[:size]), labels[:size], folder))
        return roots[size]

    tokenizers = {}
    for _, preset, _, _ in runs:
        torch.manual_seed(0)
        tokenizers[preset] = str(save_vqgan(VQGAN(PRESETS[preset]).eval(), work / preset))

    def bare(preset: str, resolution: int, size: int, threads: int) -> BareResult:
        return bare_loop(
            image_root(min(size, args.bare_images)),
            tokenizers[preset],
            resolution=resolution,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            threads=threads,
        )

    thread_choices = sorted({1, os.cpu_count() or 1})
    rows = []
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        for part, preset, resolution, size in runs:
            probe = min(size, 300)
            threads = max(thread_choices, key=lambda t: bare(preset, resolution, probe, t).images_per_s)
            repeats = args.repeats if part == "throughput" else 1
            runs_of_part = []
            before = bare(preset, resolution, size, threads)
            for repeat in range(repeats):  # bare, job, bare, job, ...: each job between two bare runs
                options = TokenizeOptions(
                    input=image_root(size),
                    output=str(work / f"store-{part}-{size}-{repeat}"),
                    tokenizer=tokenizers[preset],
                    resolution=resolution,
                    shard_size=args.shard_size,
                    batch_size=args.batch_size,
                    actors=args.actors,
                    threads_per_actor=args.threads_per_actor or threads,
                    progress=False,
                )
                job_start = time.time()
                with RayProcessMonitor() as monitor:
                    summary = run_tokenize(options)
                after = bare(preset, resolution, size, threads)
                bare_rate = (before.images_per_s + after.images_per_s) / 2
                bare_cpu = (before.cpu_s_per_1k + after.cpu_s_per_1k) / 2
                before = after
                steady, first_commit = commit_times(Path(options.output), job_start)
                runs_of_part.append(
                    {
                        "job_s": summary.seconds,
                        "job_img_per_s": summary.images_per_s,
                        "bare_img_per_s": bare_rate,
                        "first_commit_s": first_commit,
                        "ratio": summary.images_per_s / bare_rate,
                        "steady_ratio": steady / bare_rate,
                        "cpu_ratio": bare_cpu / (monitor.cpu_seconds / size * 1000),
                        "peak_worker_rss_mib": max(monitor.workers.values(), default=0.0),
                        "driver_peak_rss_mib": monitor.driver_mib,
                    }
                )
                print(part, repeat, {k: round(v, 3) for k, v in runs_of_part[-1].items()}, flush=True)

            def median(key: str, runs_of_part=runs_of_part) -> float:
                return statistics.median(run[key] for run in runs_of_part)

            rows.append(
                {
                    "part": part,
                    "encoder": f"{preset}@{resolution}",
                    "images": size,
                    "shards": summary.shards,
                    "repeats": repeats,
                    "job_s": round(median("job_s"), 2),
                    "first_commit_s": round(median("first_commit_s"), 2),
                    "job_img_per_s": round(median("job_img_per_s"), 1),
                    "bare_img_per_s": round(median("bare_img_per_s"), 1),
                    "threads": threads,
                    "ratio": round(median("ratio"), 3),
                    "ratios": " ".join(f"{run['ratio']:.2f}" for run in runs_of_part),
                    "steady_ratio": round(median("steady_ratio"), 3),
                    "cpu_ratio": round(median("cpu_ratio"), 3),
                    "peak_worker_rss_mib": round(max(r["peak_worker_rss_mib"] for r in runs_of_part), 1),
                    "driver_peak_rss_mib": round(max(r["driver_peak_rss_mib"] for r in runs_of_part), 1),
                }
            )
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
        work_dir.cleanup()  # also when a run fails (its finalizer covers a failure before the try)
    return write_result(
        "tokenize_job",
        rows,
        notes=(
            f"Shard size {args.shard_size}, batch {args.batch_size}, {args.actors} actor(s); bare runs on "
            f"up to {args.bare_images} images. Goals: ratio >= 0.85 (throughput rows); peak worker RSS flat "
            f"across the memory rows. Load average at the end (shared machine): {os.getloadavg()[0]:.1f}."
        ),
    )


if __name__ == "__main__":
    main()
