"""Benchmark: our streaming token loader vs MosaicML Streaming and LitData on the same tokens.

Claim under test (issue #5): at the same batch size, with shuffling on, reading the same tokens
from the same local S3 server (SeaweedFS, `demo.s3server.LocalS3Server`), `pipeline.dataset` is at
least 1.5x faster (samples/s) than the faster of `mosaicml-streaming` and `litdata`; peak memory is
reported beside it.

The tokens are real: Fashion-MNIST images padded to 32x32, 2x2 mean-pooled to a 16x16 grid (the
reference MaskGIT grid) and quantised to a 1024-entry codebook, with the mirrored image as the
second view, i.e. (N, 2, 16, 16) uint16 + labels. Each loader gets them in its own format, written
by its own writer (our Arrow store, Mosaic MDS, LitData chunks; zstd and ~equal samples per shard
for all three), uploaded to the server. Every loader picks one view per sample per batch, and
yields tokens as an int64 tensor (b, 16, 16) and labels (b,).

Each loader runs in its own process (so imports and memory do not mix) for two epochs with a fresh
local cache: epoch 1 is "cold" (everything comes from S3), epoch 2 "warm" (peers keep their shards
locally; ours keeps them in its disk cache). Peak memory is the peak, over 0.1 s samples, of the
summed RSS and PSS of the process and its DataLoader workers (psutil); PSS splits shared pages
(torch's libraries in forked workers) instead of counting them once per process.

Installing the peers: both declare a dependency on torchvision, which pip would satisfy by
replacing the CPU torch 2.13 with another build, and mosaicml-streaming pins numpy<2.2. They are
installed without dependencies, plus the few they need at import time (the `bench` extra):

    pip install --no-deps mosaicml-streaming==0.13.0 litdata==0.2.76
    pip install -e '.[bench]'

`streaming`'s package import pulls in its torchvision-based vision datasets, which this benchmark
never uses; `_shim_torchvision` registers an empty stand-in when torchvision is absent.

Run: `python -m benchmarks.bench_loader [--quick]`.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import types

import numpy as np

LOADERS = ("ours", "ours-forkserver", "mosaic", "litdata")
SAMPLES_PER_SHARD = 5000


def _shim_torchvision() -> None:
    """Let `import streaming` succeed without torchvision (only its vision datasets need it)."""
    if importlib.util.find_spec("torchvision") is not None:
        return
    names = (
        "torchvision",
        "torchvision.datasets",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    )
    modules = {}
    for name in names:
        modules[name] = types.ModuleType(name)
        modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    modules["torchvision.datasets"].VisionDataset = type("VisionDataset", (), {})

    def to_tensor(_):
        raise NotImplementedError("torchvision is not installed")

    modules["torchvision.transforms.functional"].to_tensor = to_tensor
    sys.modules.update(modules)


# --- data --------------------------------------------------------------------------------------


def real_tokens(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (n, 2, 16, 16) uint16 in [0, 1024), labels (n,) int64) from Fashion-MNIST train."""
    from demo.example_data import load_fashion_mnist

    images, labels = load_fashion_mnist("train")
    reps = -(-num_samples // len(images))
    images, labels = np.tile(images, (reps, 1, 1))[:num_samples], np.tile(labels, reps)[:num_samples]
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32)  # (n, 32, 32)

    def quantise(x: np.ndarray) -> np.ndarray:
        pooled = x.reshape(len(x), 16, 2, 16, 2).mean(axis=(2, 4))  # (n, 16, 16) in [0, 255]
        return np.minimum(pooled * (1024 / 256), 1023).astype(np.uint16)

    tokens = np.stack([quantise(padded), quantise(padded[:, :, ::-1])], axis=1)
    return tokens, labels.astype(np.int64)


def write_ours(url: str, tokens, labels, storage_options) -> None:
    from pipeline.store import ShardCommit, StoreManifest, TokenShard, TokenStoreWriter

    writer = TokenStoreWriter(url, storage_options)
    commits = []
    for index, start in enumerate(range(0, len(labels), SAMPLES_PER_SHARD)):
        part = slice(start, start + SAMPLES_PER_SHARD)
        ids = np.array([str(i) for i in range(start, min(start + SAMPLES_PER_SHARD, len(labels)))])
        info = writer.write_shard(index, TokenShard(tokens[part], labels[part], ids), "arrow")
        commits.append(ShardCommit(info, []))
    manifest = StoreManifest(
        store_format="arrow", codebook_size=1024, grid=(16, 16), resolution=32, views=("original", "hflip"),
        tokenizer={"config": {"kind": "mean-pool-quantiser"}, "weights_sha256": ""},
        class_names=tuple(str(c) for c in range(10)), shards=(),
    )  # fmt: skip
    writer.commit(manifest, commits)


def write_mosaic(local_dir: str, tokens, labels) -> None:
    _shim_torchvision()
    from streaming import MDSWriter

    columns = {"tokens": "ndarray:uint16:2,16,16", "label": "int"}
    size_limit = SAMPLES_PER_SHARD * (tokens[0].nbytes + 16)
    with MDSWriter(out=local_dir, columns=columns, compression="zstd", size_limit=size_limit) as writer:
        for t, label in zip(tokens, labels):
            writer.write({"tokens": t, "label": int(label)})


def _litdata_item(index: int):  # module level: litdata's optimize pickles it into its workers
    tokens, labels = _LITDATA_SOURCE
    return {"tokens": tokens[index], "label": int(labels[index])}


_LITDATA_SOURCE: tuple = ()


def write_litdata(local_dir: str, tokens, labels) -> None:
    global _LITDATA_SOURCE
    from litdata import optimize

    _LITDATA_SOURCE = (tokens, labels)
    optimize(
        fn=_litdata_item, inputs=list(range(len(labels))), output_dir=local_dir,
        chunk_size=SAMPLES_PER_SHARD, compression="zstd", num_workers=1, start_method="fork",
        verbose=False,
    )  # fmt: skip


# --- one loader, in a child process ---------------------------------------------------------------


def _pick_view(tokens, epoch: int):
    """(b, 2, 16, 16) -> (b, 16, 16) int64 with one view per sample (a cheap seeded choice)."""
    import torch

    flip = torch.randint(0, 2, (tokens.shape[0],), generator=torch.Generator().manual_seed(epoch))
    return tokens[torch.arange(tokens.shape[0]), flip].long()


def make_epochs(name: str, spec: dict):
    """A function epoch -> iterator of (tokens (b, 16, 16) int64, labels (b,) int64)."""
    b, workers, cache = spec["batch_size"], spec["workers"], spec["cache_dir"]
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    if name.startswith("ours"):
        from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
        from pipeline.stateful_loader import make_loader

        options = {
            "key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": endpoint},
        }
        data = TokenDataset(
            spec["urls"]["ours"], batch_size=b, order=OrderConfig(seed=1),
            streaming=StreamingConfig(cache_dir=cache), storage_options=options,
        )  # fmt: skip
        context = "forkserver" if name == "ours-forkserver" else "fork"
        loader = make_loader(data, num_workers=workers, multiprocessing_context=context)
        return lambda epoch: ((batch.tokens, batch.labels) for batch in loader)
    if name == "mosaic":
        _shim_torchvision()
        from streaming import StreamingDataset
        from torch.utils.data import DataLoader

        os.environ["S3_ENDPOINT_URL"] = endpoint
        data = StreamingDataset(
            remote=spec["urls"]["mosaic"], local=cache, batch_size=b, shuffle=True, shuffle_seed=1
        )
        loader = DataLoader(data, batch_size=b, num_workers=workers, drop_last=True)
        return lambda epoch: ((_pick_view(x["tokens"], epoch), x["label"].long()) for x in loader)
    if name == "litdata":
        import litdata.streaming.downloader as litdata_downloader
        from litdata import StreamingDataLoader, StreamingDataset

        # LitData's obstore download path builds its client without allow_http, so a plain-http
        # S3 endpoint such as the local server fails with "BadScheme"; allow it (a TLS endpoint
        # would not need this). Its boto3 path is only used for index.json.
        litdata_downloader._OBSTORE_CLIENT_OPTIONS = {
            **litdata_downloader._OBSTORE_CLIENT_OPTIONS,
            "allow_http": "true",
        }
        options = {
            "endpoint_url": endpoint,
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        }
        data = StreamingDataset(
            spec["urls"]["litdata"],
            cache_dir=cache,
            shuffle=True,
            drop_last=True,
            seed=1,
            storage_options=options,
        )
        loader = StreamingDataLoader(data, batch_size=b, num_workers=workers)
        return lambda epoch: ((_pick_view(x["tokens"], epoch), x["label"].long()) for x in loader)
    raise ValueError(f"unknown loader {name!r}; choose from {LOADERS}")


class TreeMemory:
    """Peak summed RSS and PSS (MiB) of this process and its children, sampled in a thread.

    RSS is sampled every `interval_s`; PSS (which reads /proc/<pid>/smaps, costly on a 2-core
    machine) every tenth sample.
    """

    def __init__(self, interval_s: float = 0.1):
        import psutil

        self._root = psutil.Process()
        self.peak_rss = self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        import psutil

        tick = 0
        while not self._stop.is_set():
            with_pss = tick % 10 == 0
            rss = pss = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    if with_pss:
                        info = proc.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                    else:
                        rss += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_rss = max(self.peak_rss, rss / 2**20)
            self.peak_pss = max(self.peak_pss, pss / 2**20)
            tick += 1
            self._stop.wait(interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def import_loader(name: str) -> None:
    """Import a loader's library and its S3 client library up front: import time is a process cost,
    not a loading cost (LitData imports boto3 itself; the others import theirs on first use)."""
    import torch  # noqa: F401

    if name.startswith("ours"):
        import s3fs  # noqa: F401

        import pipeline.stateful_loader  # noqa: F401
    elif name == "mosaic":
        _shim_torchvision()
        import boto3  # noqa: F401
        import streaming  # noqa: F401
    elif name == "litdata":
        import litdata  # noqa: F401
        import obstore  # noqa: F401


def run_child(name: str, spec: dict) -> dict:
    from tqdm import tqdm

    import_loader(name)
    memory = TreeMemory()
    start = time.perf_counter()
    epochs = make_epochs(name, spec)
    result: dict = {"loader": name}
    for epoch, label in [(0, "cold"), (1, "warm")]:
        samples, began = 0, time.perf_counter() if epoch else start  # cold includes opening the dataset
        for tokens, labels in tqdm(epochs(epoch), desc=f"{name} epoch {epoch}", leave=False, mininterval=2):
            assert tokens.dtype == labels.dtype and tokens.shape[1:] == (16, 16)
            samples += len(labels)
        seconds = time.perf_counter() - began
        result[f"{label}_samples"] = samples
        result[f"{label}_samples_per_s"] = samples / seconds
    memory.stop()
    result.update(peak_rss_mib=memory.peak_rss, peak_pss_mib=memory.peak_pss)
    return result


# --- driver ----------------------------------------------------------------------------------------


def run_in_child(name: str, spec: dict, env: dict, store_bytes: int) -> dict:
    """Run one loader in a fresh Python process; its result row (or the error it died with)."""
    command = [sys.executable, "-m", "benchmarks.bench_loader", "--child", name, "--spec", json.dumps(spec)]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)
    row = {"loader": name, "workers": spec["workers"]}
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return {**row, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    row.update(json.loads(done.stdout.strip().splitlines()[-1]), store_mib=store_bytes / 2**20)
    print(row, flush=True)
    return row


def speedup_note(rows: list[dict]) -> str:
    """Cold speed of ours over the faster peer, per worker count."""
    parts = []
    for workers in sorted({r["workers"] for r in rows}):
        speed = {
            r["loader"]: r["cold_samples_per_s"] for r in rows if r["workers"] == workers and "error" not in r
        }
        peers = [speed[p] for p in ("mosaic", "litdata") if p in speed]
        if "ours" in speed and peers:
            parts.append(f"{workers} workers: {speed['ours'] / max(peers):.2f}x")
    return "Cold speed-up of ours over the faster peer (goal >= 1.5x): " + (", ".join(parts) or "n/a") + "."


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12,000 samples instead of 60,000")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts to compare, e.g. 0,2")
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, json.loads(args.spec))))
        return {}

    from benchmarks.common import write_result
    from demo.s3server import LocalS3Server

    num_samples = args.samples or (12_000 if args.quick else 60_000)
    loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
    tokens, labels = real_tokens(num_samples)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as work, LocalS3Server() as server:
        import s3fs

        options = server.storage_options
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        urls = {"ours": server.url("bench", "ours"), "mosaic": server.url("bench", "mds"),
                "litdata": server.url("bench", "litdata")}  # fmt: skip
        print(f"writing {num_samples} samples in each format ...", flush=True)
        write_ours(urls["ours"], tokens, labels, options)
        write_mosaic(f"{work}/mds", tokens, labels)
        fs.put(f"{work}/mds/", urls["mosaic"].removeprefix("s3://"), recursive=True)
        write_litdata(f"{work}/litdata", tokens, labels)
        fs.put(f"{work}/litdata/", urls["litdata"].removeprefix("s3://"), recursive=True)
        store_bytes = {k: sum(fs.du(u.removeprefix("s3://"), total=False).values()) for k, u in urls.items()}
        for workers in [int(w) for w in args.workers.split(",")]:
            for name in loaders:
                if name == "ours-forkserver" and workers == 0:
                    continue  # no worker processes to start
                spec = {"batch_size": args.batch_size, "workers": workers, "urls": urls,
                        "cache_dir": f"{work}/cache-{name}-{workers}"}  # fmt: skip
                rows.append(run_in_child(name, spec, server.env, store_bytes[name.split("-")[0]]))
    notes = (
        f"{num_samples} real Fashion-MNIST token samples (2 views of 16x16 uint16), batch {args.batch_size}, "
        "shuffle on, local SeaweedFS S3 server, each loader in a fresh process for 2 epochs (cold = first "
        "epoch from S3 including opening the dataset and starting workers; warm = second epoch from the "
        "loader's local cache). 'ours' starts workers with fork like the peers' default; 'ours-forkserver' "
        "is our default start method. " + speedup_note(rows)
    )
    columns = ["loader", "workers", "cold_samples_per_s", "warm_samples_per_s", "peak_rss_mib",
               "peak_pss_mib", "store_mib", "cold_samples", "error"]  # fmt: skip
    return write_result("loader", rows, notes=notes, columns=columns)


if __name__ == "__main__":
    main()
