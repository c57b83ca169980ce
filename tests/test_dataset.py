"""The streaming token dataset on local stores written by the real writer from Fashion-MNIST tokens.

Several ranks are simulated in one process (one dataset per rank, stepped in lockstep, as
mosaicml/streaming's multi-rank-on-one-CPU harness does); a few cases use real DataLoader worker
processes. The resume matrix checks that the concatenated sample sequence of an interrupted run
equals the uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_dataset_support import duplicates, epoch_sequence, write_token_store

from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
from pipeline.sample_order import EpochOrder
from pipeline.shard_cache import RetryPolicy
from pipeline.stateful_loader import make_loader
from pipeline.store import ShardChecksumError, ShardMissingError, StoreFormatError, open_token_store

NUM_SAMPLES = 480
GLOBAL_BATCH = 24  # divisible by every world size below; 20 global steps per epoch
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, fashion_mnist):
    root = tmp_path_factory.mktemp("token-stores")
    paths = {}
    for name, fmt, views in [("arrow", "arrow", 2), ("zarr", "zarr", 2), ("single-view", "arrow", 1)]:
        paths[name] = str(root / name)
        write_token_store(paths[name], fashion_mnist, num_samples=NUM_SAMPLES, store_format=fmt, views=views)
    return paths


def make_ranks(url, world_size, *, num_workers=0, seed=11, window=3, context="fork", **kwargs):
    """One StatefulLoader per simulated rank."""
    order = OrderConfig(seed=seed, shuffle_window=window, **kwargs)
    return [
        make_loader(
            TokenDataset(
                url, batch_size=GLOBAL_BATCH // world_size, rank=r, world_size=world_size, order=order
            ),
            num_workers=num_workers,
            multiprocessing_context=context,
        )
        for r in range(world_size)
    ]


def run_steps(loaders, steps: int) -> list[int]:
    """Step all ranks together for `steps` global steps (crossing epochs as needed); returns the
    global sample sequence (step-major, rank-minor)."""
    sequence: list[int] = []
    while steps > 0:
        iterators = [iter(loader) for loader in loaders]
        progressed = False
        for batches in zip(*iterators):
            assert len({(b.epoch, b.position) for b in batches}) == 1
            sequence += [int(i) for b in batches for i in b.sample_ids]
            steps -= 1
            progressed = True
            if steps == 0:
                break
        assert progressed, "a fresh epoch yielded nothing"
    states = [loader.state_dict() for loader in loaders]
    assert all(
        {k: v for k, v in s.items() if k not in ("batch_size", "world_size")}
        == {k: v for k, v in states[0].items() if k not in ("batch_size", "world_size")}
        for s in states
    )
    return sequence


def reference(url, epochs: int, **kwargs) -> list[int]:
    """The uninterrupted sequence over whole epochs, on one rank, without workers."""
    return run_steps(make_ranks(url, 1, **kwargs), epochs * NUM_SAMPLES // GLOBAL_BATCH)


@pytest.mark.parametrize("fmt", ["arrow", "zarr"])
def test_batches_hold_the_store_tokens_and_labels_with_seeded_flips(stores, fmt):
    store = open_token_store(stores[fmt])
    shards = [store.read_shard(i) for i in range(store.num_shards)]
    tokens = np.concatenate([s.tokens for s in shards])  # (N, 2, 7, 7)
    labels = np.concatenate([s.labels for s in shards])
    data = TokenDataset(stores[fmt], batch_size=32, order=OrderConfig(seed=5, shuffle_window=4))
    assert data.manifest.codebook_size == 64 and tuple(data.manifest.grid) == (7, 7)
    flips, seen = [], []
    for batch in data.iter_epoch(0):
        assert batch.tokens.shape == (32, 7, 7) and str(batch.tokens.dtype) == "torch.int64"
        ids, flipped = batch.sample_ids.numpy(), batch.flipped.numpy()
        np.testing.assert_array_equal(batch.tokens.numpy(), tokens[ids, flipped.astype(int)])
        np.testing.assert_array_equal(batch.labels.numpy(), labels[ids])
        flips.append(flipped)
        seen += ids.tolist()
    assert sorted(seen) == list(range(NUM_SAMPLES))
    assert 0.4 < np.concatenate(flips).mean() < 0.6
    # Real images are not mirror-symmetric, so the flipped view really differs.
    assert (tokens[:, 0] != tokens[:, 1]).any(axis=(1, 2)).mean() > 0.5


def test_store_formats_give_identical_batches(stores):
    a = [b.tokens for b in TokenDataset(stores["arrow"], batch_size=16).iter_epoch(3)]
    z = [b.tokens for b in TokenDataset(stores["zarr"], batch_size=16).iter_epoch(3)]
    assert all((x == y).all() for x, y in zip(a, z, strict=True))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_ranks_and_workers_cover_the_epoch_exactly_once(stores, world_size, num_workers):
    order = OrderConfig(seed=2, shuffle_window=3)
    per_step: dict[tuple[int, int], list[int]] = {}
    for rank in range(world_size):
        data = TokenDataset(
            stores["arrow"],
            batch_size=GLOBAL_BATCH // world_size,
            rank=rank,
            world_size=world_size,
            order=order,
        )
        for worker in range(num_workers):
            for batch in data.iter_epoch(1, worker=worker, num_workers=num_workers):
                step = batch.position // GLOBAL_BATCH
                assert step % num_workers == worker
                per_step[(step, rank)] = batch.sample_ids.tolist()
    sequence = [
        i for s in range(NUM_SAMPLES // GLOBAL_BATCH) for r in range(world_size) for i in per_step[(s, r)]
    ]
    assert not duplicates(sequence) and sorted(sequence) == list(range(NUM_SAMPLES))
    # The same global sequence whatever the split (elastic determinism): the epoch order itself.
    sizes = [s.num_samples for s in open_token_store(stores["arrow"]).manifest.shards]
    assert sequence == EpochOrder(sizes, seed=2, epoch=1, window_shards=3).sample_ids(0, NUM_SAMPLES).tolist()


def test_same_seed_same_batches_new_epoch_new_order(stores):
    a = reference(stores["arrow"], 2, seed=4)
    assert a == reference(stores["arrow"], 2, seed=4)
    first, second = a[:NUM_SAMPLES], a[NUM_SAMPLES:]
    assert sorted(first) == sorted(second) == list(range(NUM_SAMPLES))
    assert np.mean(np.array(first) != np.array(second)) > 0.9
    assert reference(stores["arrow"], 1, seed=5) != first


# (world size, workers) of each phase and the global step at which each phase is interrupted;
# 20 global steps per epoch, 2 epochs in all.
RESUME_MATRIX = {
    "same-world": ([(2, 0), (2, 0)], [7]),
    "grow-world": ([(2, 0), (4, 0)], [7]),
    "shrink-world": ([(4, 0), (1, 0)], [13]),
    "at-epoch-end": ([(3, 0), (2, 0)], [20]),
    "across-epoch-boundary": ([(1, 0), (6, 0)], [27]),
    "twice": ([(1, 0), (6, 0), (2, 0)], [5, 21]),
    "twice-in-one-epoch": ([(2, 0), (3, 0), (4, 0)], [3, 11]),
    "real-workers-change": ([(1, 2), (2, 1), (1, 0)], [5, 26]),
}


@pytest.mark.parametrize("case", list(RESUME_MATRIX))
def test_resume_continues_with_exactly_the_unseen_samples(stores, case):
    phases, stops = RESUME_MATRIX[case]
    total_steps = 2 * NUM_SAMPLES // GLOBAL_BATCH
    expected = reference(stores["arrow"], 2)
    sequence, state, done = [], None, 0
    for (world_size, num_workers), stop in zip(phases, [*stops, total_steps]):
        loaders = make_ranks(stores["arrow"], world_size, num_workers=num_workers)
        if state is not None:
            for loader in loaders:
                loader.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint would store it
        sequence += run_steps(loaders, stop - done)
        state, done = loaders[0].state_dict(), stop
    assert sequence == expected
    assert state["epoch"] == 2 and state["position"] == 0


def test_state_counts_only_batches_handed_to_the_caller(stores):
    (loader,) = make_ranks(stores["arrow"], 1, num_workers=2)
    iterator = iter(loader)
    batches = [next(iterator) for _ in range(3)]  # workers have prefetched more than this by now
    state = loader.state_dict()
    del iterator
    assert (state["epoch"], state["position"]) == (0, 3 * GLOBAL_BATCH)
    (fresh,) = make_ranks(stores["arrow"], 1)
    fresh.load_state_dict(state)
    rest = epoch_sequence(fresh)
    seen = [int(i) for b in batches for i in b.sample_ids]
    assert seen + rest == reference(stores["arrow"], 1)


def test_forkserver_workers_read_the_same_sequence(stores):
    (loader,) = make_ranks(stores["zarr"], 1, num_workers=2, context="forkserver")
    assert epoch_sequence(loader) == reference(stores["zarr"], 1)


def test_fork_workers_after_the_parent_decoded_zarr(stores):
    # zarr v3 runs an event-loop thread once it has decoded a chunk; forked workers must not
    # inherit it half-alive (zarrs-python#171, iohub#416).
    (loader,) = make_ranks(stores["zarr"], 1, num_workers=2, context="fork")
    in_parent = list(loader.dataset.iter_epoch(0))
    assert epoch_sequence(loader) == [int(i) for b in in_parent for i in b.sample_ids]


def test_padding_repeats_the_epochs_first_samples(stores):
    data = TokenDataset(stores["arrow"], batch_size=36, order=OrderConfig(seed=1, drop_last=False))
    loader = make_loader(data)
    assert len(loader) == 14  # ceil(480 / 36)
    sequence = epoch_sequence(loader)
    assert len(sequence) == 14 * 36 and set(sequence) == set(range(NUM_SAMPLES))
    assert sequence[NUM_SAMPLES:] == sequence[: 14 * 36 - NUM_SAMPLES]
    assert loader.state_dict()["epoch"] == 1


def test_drop_last_drops_only_the_short_tail(stores):
    loader = make_loader(TokenDataset(stores["arrow"], batch_size=36, order=OrderConfig(seed=1)))
    sequence = epoch_sequence(loader)
    assert len(sequence) == 13 * 36 and not duplicates(sequence)


def test_resume_refuses_another_global_batch_unless_asked(stores):
    (saved,) = make_ranks(stores["arrow"], 1)
    first = run_steps([saved], 4)
    state = saved.state_dict()
    other = make_loader(TokenDataset(stores["arrow"], batch_size=32, order=saved.dataset.order))
    with pytest.raises(
        ValueError, match=r"global batch size is 24 .* this loader's is 32 \(batch_size 32 x world_size 1\)"
    ):
        other.load_state_dict(state)
    other.load_state_dict(state, allow_global_batch_change=True)
    rest = epoch_sequence(other)
    epoch = reference(stores["arrow"], 1)
    assert first + rest == epoch[: len(first) + len(rest)]
    assert len(first) + len(rest) == 4 * 24 + (NUM_SAMPLES - 4 * 24) // 32 * 32


def test_resume_refuses_another_seed_or_store(stores, tmp_path, fashion_mnist):
    (saved,) = make_ranks(stores["arrow"], 1, seed=1)
    run_steps([saved], 2)
    (other_seed,) = make_ranks(stores["arrow"], 1, seed=2)
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        other_seed.load_state_dict(saved.state_dict())
    write_token_store(str(tmp_path / "other"), fashion_mnist, num_samples=NUM_SAMPLES, num_shards=10)
    (other_store,) = make_ranks(str(tmp_path / "other"), 1, seed=1)
    with pytest.raises(ValueError, match="another token store"):
        other_store.load_state_dict(saved.state_dict())


def test_flip_needs_the_hflip_view(stores):
    with pytest.raises(ValueError, match="only the views"):
        TokenDataset(stores["single-view"], batch_size=8, order=OrderConfig(flip=True))
    data = TokenDataset(stores["single-view"], batch_size=8)
    assert data.order.flip is False
    assert not any(b.flipped.any() for b in data.iter_epoch(0))


def test_bad_arguments_are_named(stores):
    with pytest.raises(ValueError, match="rank must be in"):
        TokenDataset(stores["arrow"], batch_size=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenDataset(stores["arrow"], batch_size=400, world_size=2)


def copy_store(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_other_format_version_is_refused(stores, tmp_path):
    url = copy_store(stores["arrow"], tmp_path / "v2")
    path = Path(url) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreFormatError, match=r"format_version is 2; this code reads format_version 1"):
        TokenDataset(url, batch_size=8)


def test_corrupt_shard_is_named(stores, tmp_path):
    url = copy_store(stores["arrow"], tmp_path / "corrupt")
    data = TokenDataset(url, batch_size=8, streaming=StreamingConfig(retry=FAST_RETRY))
    path = Path(url) / data.manifest.shards[5].path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the object
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardChecksumError, match=r"shard 5 .*shard-000005.arrow.* sha256"):
        list(data.iter_epoch(0))


def test_missing_shard_is_named(stores, tmp_path):
    url = copy_store(stores["zarr"], tmp_path / "missing")
    data = TokenDataset(url, batch_size=8, streaming=StreamingConfig(retry=FAST_RETRY))
    os.remove(os.path.join(url, data.manifest.shards[7].path))
    with pytest.raises(ShardMissingError, match=r"shard 7 .*shard-000007.zarr.zip.* missing"):
        list(data.iter_epoch(0))


def test_errors_cross_worker_processes(stores, tmp_path):
    url = copy_store(stores["arrow"], tmp_path / "missing-workers")
    data = TokenDataset(url, batch_size=8, streaming=StreamingConfig(retry=FAST_RETRY))
    os.remove(os.path.join(url, data.manifest.shards[2].path))
    with pytest.raises(ShardMissingError, match="shard 2"):
        epoch_sequence(make_loader(data, num_workers=2, multiprocessing_context="fork"))
