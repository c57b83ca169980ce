"""The stateful loader: a DataLoader over a `TokenDataset` that knows what the training loop has seen.

The bug class it exists for (mosaicml/streaming#880, #869, LitData#775, HF datasets#7901, see
docs/architecture.md#design-notes): a loader whose state counts what its workers *prefetched*
resumes past samples the model never saw. Here the state is updated only when a batch is handed to
the caller, and it is a sample position in the epoch (see `pipeline.sample_order`), so it can be
loaded with another world size or worker count as long as the global batch is unchanged.

Each `iter()` starts fresh DataLoader workers that read the rest of the current epoch; the workers'
batches come back in step order (the DataLoader's round-robin), and every batch is checked against
the position the loader expects before it is yielded.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import multiprocessing.forkserver
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from torch.utils.data import DataLoader

from pipeline.dataset import CODEC_MODULES, TokenBatch, TokenDataset
from pipeline.store import StoreManifest

STATE_VERSION = 1


def store_fingerprint(manifest: StoreManifest) -> str:
    """sha256 over the shards' sha256 values: identifies a store's content."""
    return hashlib.sha256("\n".join(s.sha256 for s in manifest.shards).encode()).hexdigest()


def _freeze_inherited(_worker_id: int) -> None:
    """Keep a forked worker's garbage collector off the objects it inherited.

    A full collection in a forked child walks (and so copies, page by page) the parent's whole heap:
    about a second per worker start for a training process with torch loaded. Frozen objects are never
    collected by the child (they are the parent's), and their pages stay shared.
    """
    gc.freeze()


class StatefulLoader:
    """A DataLoader over a `TokenDataset` whose state is what the training loop actually received.

    Each `iter()` yields the rest of the current epoch; the next `iter()` starts the next epoch.
    `state_dict()` counts batches handed to the caller (not batches workers prefetched), so saving it
    after a step and loading it into a fresh loader (any world size / worker count with the same
    global batch) continues with exactly the samples not yet seen.

    Args:
        dataset: the rank's dataset.
        num_workers: DataLoader worker processes (0 = read in this process, with threads).
        multiprocessing_context: worker start method; "forkserver" inherits no S3 client or thread.
        pin_memory, prefetch_factor, timeout_s: passed to `torch.utils.data.DataLoader`.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        *,
        num_workers: int = 0,
        multiprocessing_context: str | None = "forkserver",
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        timeout_s: float = 0,
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.num_workers = num_workers
        self._loader_kwargs: dict[str, Any] = {"pin_memory": pin_memory, "timeout": timeout_s}
        if num_workers > 0:
            context = multiprocessing_context
            if context == "forkserver":
                # Workers then fork from a server that has imported torch once (about 1 s per worker
                # start instead of 4-5 s on a small machine); the server holds no client or thread.
                context = multiprocessing.get_context("forkserver")
                codec = CODEC_MODULES[dataset.manifest.store_format]
                context.set_forkserver_preload(["__main__", "pipeline.dataset", codec])
                # Start the server now: its imports then overlap whatever the caller does before the
                # first epoch (building the model) instead of delaying the first batch.
                multiprocessing.forkserver.ensure_running()
            self._loader_kwargs.update(
                multiprocessing_context=context,
                prefetch_factor=prefetch_factor,
                worker_init_fn=_freeze_inherited,
            )
        self.epoch, self.position = 0, 0

    def _roll_over(self) -> None:
        """An epoch read to its end is the next epoch's position 0."""
        if self.position > 0 and self.dataset.steps_in_epoch(self.position) == 0:
            self.epoch, self.position = self.epoch + 1, 0

    def __len__(self) -> int:
        self._roll_over()
        return self.dataset.steps_in_epoch(self.position)

    def __iter__(self) -> Iterator[TokenBatch]:
        self._roll_over()
        self.dataset.set_position(self.epoch, self.position)
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, **self._loader_kwargs
        )
        for batch in loader:
            if (batch.epoch, batch.position) != (self.epoch, self.position):
                raise RuntimeError(
                    f"batch out of order: got epoch {batch.epoch} position {batch.position}, "
                    f"expected epoch {self.epoch} position {self.position}"
                )
            self.position += self.dataset.global_batch_size
            yield batch
        self._roll_over()

    def state_dict(self) -> dict[str, Any]:
        """The data position and what it is valid for (JSON-serialisable)."""
        self._roll_over()
        data = self.dataset
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "global_batch_size": data.global_batch_size,
            "batch_size": data.batch_size,
            "world_size": data.world_size,
            "num_samples": data.num_samples,
            "store_fingerprint": store_fingerprint(data.manifest),
            "order": asdict(data.order),
        }

    def load_state_dict(self, state: dict[str, Any], *, allow_global_batch_change: bool = False) -> None:
        """Continue from a saved position.

        Args:
            state: from `state_dict()`, possibly saved with another world size or worker count.
            allow_global_batch_change: accept a different global batch size (the order is the same;
                batches are then cut differently from the saved position on).

        Raises:
            ValueError: the state belongs to another store, order config or global batch size.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"loader state version {state.get('version')!r}; this code reads {STATE_VERSION}"
            )
        data = self.dataset
        if state["num_samples"] != data.num_samples or state["store_fingerprint"] != store_fingerprint(
            data.manifest
        ):
            raise ValueError(
                f"the saved loader state belongs to another token store ({state['num_samples']} samples, "
                f"fingerprint {state['store_fingerprint'][:12]}); this store ({data.url}) has "
                f"{data.num_samples} samples, fingerprint {store_fingerprint(data.manifest)[:12]}"
            )
        saved_order, current = state["order"], asdict(data.order)
        differ = [
            f"{k}: saved {saved_order.get(k)!r}, now {v!r}"
            for k, v in current.items()
            if saved_order.get(k) != v
        ]
        if differ:
            raise ValueError("the saved loader state used another order config: " + "; ".join(differ))
        if state["global_batch_size"] != data.global_batch_size and not allow_global_batch_change:
            raise ValueError(
                f"the saved global batch size is {state['global_batch_size']} (batch_size "
                f"{state['batch_size']} x world_size {state['world_size']}) but this loader's is "
                f"{data.global_batch_size} (batch_size {data.batch_size} x world_size {data.world_size}); "
                "keep batch_size * world_size unchanged, or pass allow_global_batch_change=True"
            )
        if not 0 <= state["position"] <= data.num_samples + data.global_batch_size:
            raise ValueError(f"saved position {state['position']} is outside the epoch")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._roll_over()


def make_loader(dataset: TokenDataset, num_workers: int = 0, **kwargs: Any) -> StatefulLoader:
    """A `StatefulLoader` over `dataset` (see its arguments)."""
    return StatefulLoader(dataset, num_workers=num_workers, **kwargs)
