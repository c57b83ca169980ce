"""Benchmark: loader epoch and token-store writes through 0 % vs 5 % injected S3 faults.

Claim under test (issue #16 item 5, issue #22 part 4): with 5 % of the requests faulted (503 SlowDown,
500 InternalError, a reset mid-body, a body cut short by a clean close, a 2 s stall, a 2 s drip; a
sixth each, `demo.s3_fault_proxy`), the streaming loader and the token-store writer still finish
with exactly the fault-free result, by the retries of `storage.filesystem`, and keep >= 0.8x of
their fault-free throughput, by the hedged requests of `storage.hedging`; this measures what the
faults cost in throughput.

Setup: the real tokens of `benchmarks.bench_loader` (Fashion-MNIST, 2 views of 16x16 uint16) in an
Arrow token store of `--samples` samples, 200 a shard, on the local SeaweedFS server. Every row goes
through the fault proxy (the "direct" row skips it: the proxy's own cost) with the stated faults:

- loader: one epoch of `pipeline.dataset.TokenDataset` (batch 256, shuffle window 16, flip on, no
  disk cache so every shard comes from S3, 8 prefetch threads, no DataLoader workers); its sample
  sequence is checked against the fault-free epoch;
- writer: `TokenStoreWriter.write_shard` of every shard from 4 threads (as the tokenize job's write
  tasks run side by side), then the manifest commit; MiB/s of shard bytes.

Rows: no faults; 5 % mixed with botocore "standard" retries (our default); the same with "adaptive"
retries (which also slow the client after a SlowDown); 5 % of one kind only, for each kind (what
each kind costs); no faults again. `vs_0_percent`
divides by the mean of the two fault-free rows (the shared machine's load drifts during a run).

Run: `python -m benchmarks.bench_s3_faults [--quick]` (about three minutes; --quick about one).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from demo.s3_fault_proxy import FAULT_KINDS

SAMPLES_PER_SHARD = 200
CASES = (  # name, proxy?, faults (rate, kind or "mixed"), botocore retry mode
    ("direct", False, 0.0, "mixed", "standard"),
    ("0 %", True, 0.0, "mixed", "standard"),
    ("5 % mixed", True, 0.05, "mixed", "standard"),
    ("5 % mixed, adaptive retries", True, 0.05, "mixed", "adaptive"),
    *((f"5 % {kind}", True, 0.05, kind, "standard") for kind in FAULT_KINDS),  # what each kind costs
    ("0 % again", True, 0.0, "mixed", "standard"),  # brackets the fault rows: the machine's load drifts
)


def fault_config(rate: float, kind: str, seed: int):
    from demo.s3_fault_proxy import FaultConfig

    if kind == "mixed":
        return FaultConfig.mixed(rate, seed=seed)
    return FaultConfig.only(kind, rate, seed=seed)


def with_mode(options: dict, mode: str) -> dict:
    return {**options, "config_kwargs": {"retries": {"max_attempts": 5, "mode": mode}}}


def write_store(url: str, tokens, labels, storage_options: dict) -> int:
    """Write the store with 4 writer threads; returns the shard bytes written."""
    from pipeline.store import ShardCommit, StoreManifest, TokenShard, TokenStoreWriter

    writer = TokenStoreWriter(url, storage_options)

    def write(index: int):
        part = slice(index * SAMPLES_PER_SHARD, (index + 1) * SAMPLES_PER_SHARD)
        ids = np.array([str(i) for i in range(len(labels))[part]])
        return writer.write_shard(index, TokenShard(tokens[part], labels[part], ids), "arrow")

    with ThreadPoolExecutor(max_workers=4) as pool:
        infos = list(pool.map(write, range(-(-len(labels) // SAMPLES_PER_SHARD))))
    manifest = StoreManifest(
        store_format="arrow", codebook_size=1024, grid=(16, 16), resolution=32, views=("original", "hflip"),
        tokenizer={"config": {"kind": "mean-pool-quantiser"}, "weights_sha256": ""},
        class_names=tuple(str(c) for c in range(10)), shards=(),
    )  # fmt: skip
    writer.commit(manifest, [ShardCommit(info, []) for info in infos])
    return sum(info.bytes for info in infos)


def read_epoch(url: str, storage_options: dict) -> list[int]:
    from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
    from pipeline.stateful_loader import make_loader

    data = TokenDataset(
        url,
        batch_size=256,
        order=OrderConfig(seed=0, shuffle_window=16, flip=True),
        streaming=StreamingConfig(cache_limit_bytes=0, prefetch_shards=8, fetch_threads=8),
        storage_options=storage_options,
    )
    return [int(i) for batch in make_loader(data) for i in batch.sample_ids]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8,000 samples instead of 20,000")
    parser.add_argument("--samples", type=int, default=None)
    args = parser.parse_args(argv)

    from benchmarks.bench_loader import real_tokens
    from benchmarks.common import write_result
    from demo.s3_fault_proxy import FaultConfig, S3FaultProxy
    from demo.s3server import LocalS3Server

    num_samples = args.samples or (8_000 if args.quick else 20_000)
    tokens, labels = real_tokens(num_samples)
    rows = []
    with LocalS3Server() as server:
        proxy = S3FaultProxy.for_server(server).start()
        try:
            source = server.url("bench-faults", "source")
            write_store(source, tokens, labels, server.storage_options)
            reference = read_epoch(source, server.storage_options)
            for seed, (name, through_proxy, rate, kind, mode) in enumerate(CASES):
                options = with_mode(proxy.storage_options if through_proxy else server.storage_options, mode)
                for workload in ("loader", "writer"):
                    proxy.faults = fault_config(rate, kind, seed)
                    proxy.reset_counts()
                    start = time.perf_counter()
                    if workload == "loader":
                        sequence = read_epoch(source, options)
                        assert sequence == reference, f"{name}: the epoch differs from the fault-free one"
                        amount, unit = len(sequence), "samples/s"
                    else:
                        written = write_store(server.url("bench-faults", f"w{seed}"), tokens, labels, options)
                        amount, unit = written / 2**20, "MiB/s"
                    seconds = time.perf_counter() - start
                    proxy.faults = FaultConfig()
                    counts = proxy.counts
                    rows.append({
                        "workload": workload, "faults": name, "retry_mode": mode,
                        "requests": counts.requests if through_proxy else "",
                        **{fault: getattr(counts, fault) for fault in FAULT_KINDS},
                        "seconds": round(seconds, 2), "throughput": amount / seconds, "unit": unit,
                    })  # fmt: skip
                    print(rows[-1], flush=True)
        finally:
            proxy.stop()
    for row in rows:  # relative to the same workload through the proxy without faults (mean of 2 runs)
        same = [r for r in rows if r["workload"] == row["workload"] and r["faults"].startswith("0 %")]
        row["vs_0_percent"] = row["throughput"] * len(same) / sum(r["throughput"] for r in same)
    rows.sort(key=lambda r: r["workload"])
    shards = -(-num_samples // SAMPLES_PER_SHARD)
    notes = (
        f"{num_samples} real token samples (2 views of 16x16 uint16) in {shards} "
        "Arrow shards on the local SeaweedFS server; loader: one epoch, batch 256, no disk cache, 8 fetch "
        "threads; writer: 4 threads. Faults injected per request by demo.s3_fault_proxy (stall and drip "
        "2 s; '5 % <kind>' rows: that kind only; retried requests draw again, so a row may count more "
        "faults than 5 %); every "
        "faulted epoch yielded exactly the fault-free sample sequence. 2 shared CPU cores: rows differ by "
        "up to ~30 % from noise alone (compare the 'direct' and '0 %' rows)."
    )
    columns = ["workload", "faults", "retry_mode", "requests", *FAULT_KINDS, "seconds",
               "throughput", "unit", "vs_0_percent"]  # fmt: skip
    return write_result("s3_faults", rows, notes=notes, columns=columns)


if __name__ == "__main__":
    main()
