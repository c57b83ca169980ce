"""The streaming token dataset: seeded, elastic, exactly resumable batches of (tokens, labels).

Reads a token store (`pipeline.store`, Arrow or Zarr shards, s3:// or local) and yields batches as
torch tensors. The order is `pipeline.sample_order`'s: a pure function of (seed, epoch, store), split
into global batches of B = batch_size * world_size; rank r takes its slice of every global batch and
DataLoader worker w takes every num_workers-th of the rank's batches. The position in an epoch is a
sample offset, so a run resumes exactly, with another world size or worker count (same B), across
epoch boundaries, and any number of times (mosaicml/streaming's elastic determinism; torchdata's
StatefulDataLoader for the "count what the training loop got, not what workers prefetched" rule,
which `pipeline.stateful_loader` implements).

Typical use in a training worker (`make_loader` is in `pipeline.stateful_loader`)::

    data = TokenDataset(url, batch_size=64, rank=rank, world_size=world_size,
                        order=OrderConfig(seed=0), storage_options=options)
    assert data.manifest.codebook_size == model_config.codebook_size
    loader = make_loader(data, num_workers=4)
    loader.load_state_dict(checkpoint["data"])          # when resuming
    for batch in loader:                                 # the rest of the current epoch
        train_step(batch.tokens, batch.labels)           # (b, h, w) int64, (b,) int64
        checkpoint["data"] = loader.state_dict()

Shapes: b per-rank batch, B = b * world_size global batch, h x w token grid, V views in the store.
Memory per reader process (the main process, or each DataLoader worker): at most the decoded shards
of the windows one batch touches (one window, two where a batch straddles a window boundary) plus
`prefetch_shards`; a window is `shuffle_window` shards. The disk cache is bounded by
`cache_limit_bytes` and shared by the processes of a node. Every worker decodes every shard of the
windows it reads (its batches are spread over all of them), so decoding work grows with workers.

DataLoader workers default to the "forkserver" start method: nothing (no S3 client, no thread) is
inherited from the training process; the dataset itself is also safe under "fork" (its filesystem
is opened lazily in each process, see `pipeline.shard_cache`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import fsspec
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.sample_order import EpochOrder, flip_choices, global_steps, rank_step_ranges
from pipeline.shard_cache import DiskCache, RetryPolicy, ShardPrefetcher, ShardSource, private_client_options
from pipeline.store import StoreFormatError, StoreManifest, TokenShard, open_token_store

CODEC_MODULES = {"arrow": "pyarrow.ipc", "zarr": "zarr"}  # what decoding a shard of each format imports


@dataclass(frozen=True)
class OrderConfig:
    """What defines the sample sequence; a resumed run must use the same values.

    Attributes:
        seed: shuffle seed.
        shuffle: False reads the store in order (shards in order, samples in order).
        shuffle_window: shards whose samples are mixed together (see `pipeline.sample_order`);
            None = the whole store (a perfect global shuffle; every reader holds the whole store).
        flip: use the store's horizontally flipped view for a seeded half of the samples each epoch.
            None = when the store has that view.
        drop_last: drop the last partial global batch of an epoch; False pads it with the epoch's
            first samples instead (so some samples appear twice in that epoch).
    """

    seed: int = 0
    shuffle: bool = True
    shuffle_window: int | None = 8
    flip: bool | None = None
    drop_last: bool = True


@dataclass(frozen=True)
class StreamingConfig:
    """How shards reach a reader; free to change between runs (the sequence does not depend on it).

    Attributes:
        cache_dir: node-local shard cache directory, shareable by processes and runs. None = the
            user's cache dir (`$XDG_CACHE_HOME/maskgit/shards`, ~/.cache by default, where bounded caches
            that outlive a run belong, as the Hugging Face hub's does; never $TMPDIR) for remote stores;
            a local store is then read in place.
        cache_limit_bytes: disk cache bound (least recently used shards are evicted); 0 = no cache.
        prefetch_shards: shards loaded ahead beyond those the current batch needs.
        fetch_threads: background fetch threads per reader process.
        retry: retries of transient object-store errors.
    """

    cache_dir: str | None = None
    cache_limit_bytes: int = 4 * 2**30
    prefetch_shards: int = 4
    fetch_threads: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class TokenBatch(NamedTuple):
    """One rank's batch."""

    tokens: torch.Tensor  # (b, h, w) int64 token ids in [0, codebook_size)
    labels: torch.Tensor  # (b,) int64 class ids
    sample_ids: torch.Tensor  # (b,) int64 sample index in the store (shard order)
    flipped: torch.Tensor  # (b,) bool, True where the hflip view was used
    epoch: int
    position: int  # first position of this global batch in the epoch order

    def __reduce__(self):
        # A DataLoader worker sends every tensor through its own shared-memory segment; the three
        # per-sample columns travel as one (3, b) tensor instead (a third of the transfer cost).
        columns = torch.stack([self.labels, self.sample_ids, self.flipped.long()])  # (3, b)
        return _unpack_token_batch, (self.tokens, columns, self.epoch, self.position)


def _unpack_token_batch(tokens: torch.Tensor, columns: torch.Tensor, epoch: int, position: int) -> TokenBatch:
    return TokenBatch(tokens, columns[0], columns[1], columns[2].bool(), epoch, position)


def default_cache_dir() -> str:
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "maskgit", "shards")


class TokenDataset(IterableDataset):
    """Batches of one rank from a token store, in a seeded order independent of world size.

    Args:
        url: the store (`s3://bucket/prefix` or a local path).
        batch_size: per-rank batch b; the global batch is b * world_size.
        rank, world_size: this rank among the training processes.
        order: what defines the sequence (seed, shuffle window, flip, drop_last).
        streaming: cache, prefetch and retry settings.
        storage_options: fsspec options (credentials, endpoint); never logged.

    Raises:
        StoreFormatError / StoreIncompleteError: from opening the store.
        ValueError: a bad rank, batch size, flip request or a store smaller than one global batch.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        order: OrderConfig | None = None,
        streaming: StreamingConfig | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        order = order or OrderConfig()
        self.url = url
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.streaming = streaming or StreamingConfig()
        self._storage_options = storage_options
        # The manifest is read here; the filesystem is not kept (each process opens its own).
        self.manifest: StoreManifest = open_token_store(url, private_client_options(storage_options)).manifest
        has_flip = len(self.manifest.views) > 1
        if order.flip and not has_flip:
            raise ValueError(
                f"flip=True but the store at {url} has only the views {list(self.manifest.views)}; "
                "tokenize with the hflip view or pass flip=False"
            )
        if order.shuffle_window is not None and order.shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1 shard or None, got {order.shuffle_window}")
        self.order = OrderConfig(**{**asdict(order), "flip": has_flip if order.flip is None else order.flip})
        if self.num_samples == 0 or (self.order.drop_last and self.num_samples < self.global_batch_size):
            raise ValueError(
                f"the store at {url} has {self.num_samples} samples, fewer than one global batch of "
                f"{self.global_batch_size} (batch_size {batch_size} x world_size {world_size}) with drop_last"
            )
        self._epoch, self._position = 0, 0
        # Import the shard codec's library now, so forked DataLoader workers share it instead of
        # each importing it on its first shard (about a second per worker on a small machine).
        importlib.import_module(CODEC_MODULES[self.manifest.store_format])

    def __repr__(self) -> str:  # no storage options: they may hold credentials
        return (
            f"TokenDataset({self.url!r}, samples={self.num_samples}, batch_size={self.batch_size}, "
            f"rank={self.rank}, world_size={self.world_size}, order={self.order})"
        )

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch_order(self, epoch: int) -> EpochOrder:
        """The order of `epoch` (position -> sample id), the same on every rank and worker."""
        return EpochOrder(
            [s.num_samples for s in self.manifest.shards],
            seed=self.order.seed,
            epoch=epoch,
            shuffle=self.order.shuffle,
            window_shards=self.order.shuffle_window,
        )

    def steps_in_epoch(self, position: int = 0) -> int:
        """Batches each rank yields in an epoch read from `position` on."""
        return global_steps(self.num_samples, position, self.global_batch_size, self.order.drop_last)

    def set_position(self, epoch: int, position: int) -> None:
        """Where `iter(dataset)` starts: set by `StatefulLoader` before it starts workers."""
        self._epoch, self._position = int(epoch), int(position)

    def __len__(self) -> int:
        return self.steps_in_epoch(self._position)

    def __iter__(self) -> Iterator[TokenBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_epoch(self._epoch, self._position, worker=worker, num_workers=num_workers)

    def iter_epoch(
        self, epoch: int, position: int = 0, *, worker: int = 0, num_workers: int = 1
    ) -> Iterator[TokenBatch]:
        """This rank's batches of `epoch` from `position` on, the ones worker `worker` of
        `num_workers` reads (every num_workers-th), in order. Pure in its arguments."""
        order = self.epoch_order(epoch)
        ranges = rank_step_ranges(
            position,
            self.steps_in_epoch(position),
            self.global_batch_size,
            self.rank,
            self.batch_size,
            worker,
            num_workers,
        )
        if not ranges:
            return
        # Read plan: the windows this worker visits in order, and which visits each batch needs.
        visits: list[int] = []
        spans: list[tuple[int, int]] = []
        for _, lo, hi in ranges:
            first = None
            for window in order.windows_of_range(lo, hi):
                if not visits or visits[-1] != window:
                    visits.append(window)
                first = len(visits) - 1 if first is None else first
            spans.append((first, len(visits)))
        sequence = [int(s) for window in visits for s in order.windows[window]]
        visit_starts = np.concatenate([[0], np.cumsum([len(order.windows[w]) for w in visits])])
        depth = max(int(visit_starts[b] - visit_starts[a]) for a, b in spans) + self.streaming.prefetch_shards
        prefetcher = ShardPrefetcher(self._shard_loader(), sequence, depth, self.streaming.fetch_threads)
        try:
            for (step, lo, hi), (a, b) in zip(ranges, spans):
                start, stop = int(visit_starts[a]), int(visit_starts[b])
                prefetcher.release_before(start)
                shards = {sequence[p]: prefetcher.get(p) for p in range(start, stop)}
                yield self._assemble(
                    order, order.sample_ids(lo, hi), shards, epoch, position + step * self.global_batch_size
                )
        finally:
            prefetcher.close()

    def _shard_loader(self) -> _ShardLoader:
        streaming = self.streaming
        remote = fsspec.utils.get_protocol(self.url) not in ("file", "local")
        cache = None
        if streaming.cache_limit_bytes > 0 and (remote or streaming.cache_dir is not None):
            cache = DiskCache(streaming.cache_dir or default_cache_dir(), streaming.cache_limit_bytes)
        source = ShardSource(
            self.url, self.manifest, self._storage_options, cache=cache, retry=streaming.retry
        )
        return _ShardLoader(source)

    def _assemble(
        self, order: EpochOrder, ids: np.ndarray, shards: dict[int, TokenShard], epoch: int, position: int
    ) -> TokenBatch:
        shard_index, local = order.locate(ids)  # (b,), (b,)
        flipped = flip_choices(ids, self.order.seed, epoch) if self.order.flip else np.zeros(len(ids), bool)
        view = flipped.astype(np.int64)
        tokens = np.empty((len(ids), *self.manifest.grid), np.uint16)  # (b, h, w)
        labels = np.empty(len(ids), np.int64)  # (b,)
        for s in np.unique(shard_index):
            mask = shard_index == s
            shard = shards[int(s)]
            tokens[mask] = shard.tokens[local[mask], view[mask]]
            labels[mask] = shard.labels[local[mask]]
        return TokenBatch(
            torch.from_numpy(tokens.astype(np.int64)),
            torch.from_numpy(labels),
            torch.from_numpy(ids),
            torch.from_numpy(flipped),
            epoch,
            position,
        )


class _ShardLoader:
    """Shard index -> decoded shard, checked against the manifest's sample count and grid."""

    def __init__(self, source: ShardSource):
        self.source = source

    def __call__(self, index: int) -> TokenShard:
        shard = self.source.load(index)
        manifest = self.source.manifest
        expected = (manifest.shards[index].num_samples, len(manifest.views), *manifest.grid)
        if shard.tokens.shape != expected or len(shard.labels) != expected[0]:
            raise StoreFormatError(
                f"shard {index} ({manifest.shards[index].path}) holds tokens {shard.tokens.shape} and "
                f"{len(shard.labels)} labels; the manifest says {expected}"
            )
        return shard
