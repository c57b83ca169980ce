"""The sample order of an epoch, and which positions each (rank, worker) reads: pure arithmetic.

The order of epoch e is a pure function of (seed, e, the shard sizes, shuffle, window size) and of
nothing else: not of the world size, the worker count or the global batch size. That is what makes
resumption exact and elastic (the idea of mosaicml/streaming's "elastic determinism", with the
position kept in samples so that it survives a change of world size or workers).

How the order is built (a two-level shuffle, as in LitData's chunk + in-chunk permutation, but over
a *window* of shards so the shuffle is much better than shard order + a local buffer):

1. The shards are permuted (seeded by seed, epoch).
2. The permuted shards are cut into windows of `window_shards` consecutive shards.
3. Inside each window the samples of all its shards are permuted (seeded by seed, epoch, window).
4. The epoch order is the windows one after the other.

A reader therefore needs only the shards of one window (two where a batch straddles windows) in
memory at a time, while any sample can land anywhere inside its window. `window_shards=None` makes
one window of the whole store: a perfect global permutation (every reader then holds the whole store;
fine for ImageNet tokens, ~0.66 GB per view at 16x16). The trade-off: larger windows shuffle better
and cost `window_shards` decoded shards of memory per reader process.

Permutations are argsorts of a keyed SplitMix64 hash written here (instead of numpy's Generator,
whose streams numpy does not promise to keep across versions), so an order cannot change under a
run that is resumed after a library upgrade.

Positions: the epoch order is a list of N sample ids. Global step s of an epoch that starts (or
resumes) at position p0 covers positions [p0 + s*B, p0 + (s+1)*B), B the global batch; rank r takes
[.. + r*b, .. + (r+1)*b), b = B / world_size; DataLoader worker w of rank r takes the steps with
s % num_workers == w (the DataLoader's round-robin over workers then restores step order).
With drop_last the epoch ends when fewer than B positions remain; otherwise positions past N wrap
around to the start of the same epoch order (the last batch is padded with the epoch's first samples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK64 = (1 << 64) - 1
_SHARD_STREAM = 1
_WINDOW_STREAM = 2
_FLIP_STREAM = 3


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (a bijection of uint64), elementwise; arithmetic wraps mod 2**64."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keyed_hash(values: np.ndarray, *key: int) -> np.ndarray:
    """64-bit hashes of integer `values` under a key of integers (seed, epoch, stream, ...).

    Distinct values give distinct hashes for one key (the mixing is a bijection), so sorting by the
    hash is a permutation without ties.
    """
    state = np.zeros(1, np.uint64)
    for word in key:
        state = _splitmix64(state ^ np.uint64(int(word) & _MASK64))
    return _splitmix64(np.asarray(values, dtype=np.int64).astype(np.uint64) ^ state)


def keyed_permutation(n: int, *key: int) -> np.ndarray:
    """A permutation of range(n) (int64) that depends only on n and the key."""
    return np.argsort(keyed_hash(np.arange(n), *key), kind="stable")


def flip_choices(sample_ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Whether each sample uses its horizontally flipped view this epoch: (n,) bool.

    A hash of (seed, epoch, sample id), so every rank and worker agrees without communicating, and
    a sample's view is the same however the epoch is split or resumed.
    """
    return (keyed_hash(sample_ids, seed, epoch, _FLIP_STREAM) >> np.uint64(63)).astype(bool)


def global_steps(num_samples: int, start: int, global_batch: int, drop_last: bool) -> int:
    """How many global batches remain in an epoch from position `start`."""
    remaining = num_samples - start
    if remaining <= 0:
        return 0
    return remaining // global_batch if drop_last else -(-remaining // global_batch)


class EpochOrder:
    """The order of one epoch: position (0..N-1) -> global sample id, built window by window.

    Sample ids number the store's samples in shard order (shard 0's samples first). Memory is
    O(number of shards) plus the permutation of the (at most two) windows most recently asked for.

    Args:
        shard_sizes: samples per shard, in manifest order.
        seed: the run's shuffle seed.
        epoch: the epoch (0-based).
        shuffle: False gives the store's own order (shards in order, samples in order).
        window_shards: shards per shuffle window; None = the whole store (a global permutation).
    """

    def __init__(
        self,
        shard_sizes: Sequence[int],
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        window_shards: int | None = None,
    ):
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        if sizes.ndim != 1 or len(sizes) == 0 or (sizes < 0).any():
            raise ValueError(f"shard_sizes must be a non-empty list of counts >= 0, got {shard_sizes!r}")
        if window_shards is not None and window_shards < 1:
            raise ValueError(f"window_shards must be >= 1 or None (whole store), got {window_shards}")
        self.seed, self.epoch, self.shuffle = int(seed), int(epoch), bool(shuffle)
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes)])  # (S + 1,) first id of each shard
        self.num_samples = int(self.shard_starts[-1])
        num_shards = len(sizes)
        shard_order = (
            keyed_permutation(num_shards, self.seed, self.epoch, _SHARD_STREAM)
            if shuffle
            else np.arange(num_shards)
        )
        width = num_shards if window_shards is None else min(window_shards, num_shards)
        self.windows: list[np.ndarray] = [shard_order[i : i + width] for i in range(0, num_shards, width)]
        window_sizes = [int(sizes[shards].sum()) for shards in self.windows]
        self.window_starts = np.concatenate([[0], np.cumsum(window_sizes)])  # (num_windows + 1,)
        self._window_ids: dict[int, np.ndarray] = {}

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def window_of(self, positions: np.ndarray | int) -> np.ndarray:
        """Window index of each position in [0, N) (empty windows are never returned)."""
        return np.searchsorted(self.window_starts, positions, side="right") - 1

    def window_sample_ids(self, window: int) -> np.ndarray:
        """The sample ids of one window in epoch order: (window size,) int64."""
        ids = self._window_ids.get(window)
        if ids is None:
            ids = np.concatenate(
                [np.arange(self.shard_starts[s], self.shard_starts[s + 1]) for s in self.windows[window]]
            )
            if self.shuffle:
                ids = ids[keyed_permutation(len(ids), self.seed, self.epoch, _WINDOW_STREAM, window)]
            if len(self._window_ids) >= 2:  # a batch touches at most a couple of windows at a time
                self._window_ids.pop(next(iter(self._window_ids)))
            self._window_ids[window] = ids
        return ids

    def sample_ids(self, start: int, stop: int) -> np.ndarray:
        """Sample ids at positions [start, stop); positions >= N wrap around (padding): (stop-start,)."""
        positions = np.arange(start, stop) % self.num_samples
        windows = self.window_of(positions)
        out = np.empty(len(positions), dtype=np.int64)
        for window in np.unique(windows):
            mask = windows == window
            out[mask] = self.window_sample_ids(int(window))[positions[mask] - self.window_starts[window]]
        return out

    def windows_of_range(self, start: int, stop: int) -> list[int]:
        """Windows touched by positions [start, stop), in the order they are read (with wrap-around)."""
        if stop <= start:
            return []
        first, last = start % self.num_samples, (stop - 1) % self.num_samples
        wa, wb = int(self.window_of(first)), int(self.window_of(last))
        if stop - start >= self.num_samples:  # a padded batch larger than the store: every window
            return list(range(wa, self.num_windows)) + list(range(0, wa))
        if first <= last:
            return list(range(wa, wb + 1))
        # The range wraps past N (a padded last batch).
        return list(range(wa, self.num_windows)) + list(range(0, wb + 1))

    def locate(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids -> (shard index, index inside the shard), each (n,) int64."""
        shards = np.searchsorted(self.shard_starts, sample_ids, side="right") - 1
        return shards, sample_ids - self.shard_starts[shards]


def rank_step_ranges(
    start: int, steps: int, global_batch: int, rank: int, batch_size: int, worker: int, num_workers: int
) -> list[tuple[int, int, int]]:
    """The global steps one (rank, worker) reads: [(step, first position, stop position), ...].

    Args:
        start: the position the epoch starts (or resumes) at.
        steps: global steps left in the epoch from `start` (see `global_steps`).
        global_batch: B = batch_size * world_size.
        rank, batch_size: this rank and its per-rank batch b.
        worker, num_workers: this DataLoader worker (0 and 1 without workers).
    """
    first = start + rank * batch_size  # this rank's first position in global step 0
    return [
        (step, first + step * global_batch, first + step * global_batch + batch_size)
        for step in range(worker, steps, num_workers)
    ]
