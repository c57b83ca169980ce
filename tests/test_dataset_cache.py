"""The shard cache, source and prefetcher under the token dataset (pipeline/shard_cache.py).

Real shard objects from a store written by the real writer; the disk cache is a real directory.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from test_dataset_support import epoch_sequence, write_token_store

from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
from pipeline.shard_cache import DiskCache, RetryPolicy, ShardPrefetcher, ShardSource
from pipeline.stateful_loader import make_loader
from pipeline.store import ShardMissingError, open_token_store

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture(scope="module")
def store(tmp_path_factory, fashion_mnist):
    url = str(tmp_path_factory.mktemp("cache-store") / "store")
    write_token_store(url, fashion_mnist, num_samples=240, num_shards=6)
    return open_token_store(url)


def test_disk_cache_stays_under_its_limit_and_evicts_least_recently_used(store, tmp_path):
    infos = store.manifest.shards
    data = [store.fetch_shard_bytes(i) for i in range(4)]
    cache = DiskCache(tmp_path, limit_bytes=sum(info.bytes for info in infos[:3]))
    for i in range(3):
        assert cache.write(infos[i], data[i])
        time.sleep(0.02)  # distinct modification times
    assert cache.read(infos[0]) == data[0]  # shard 0 is now the most recently used
    time.sleep(0.02)
    cache.write(infos[3], data[3])
    assert cache.size_bytes() <= cache.limit_bytes
    assert cache.read(infos[0]) == data[0] and cache.read(infos[3]) == data[3]
    assert cache.read(infos[1]) is None  # least recently used went first


def test_disk_cache_skips_what_cannot_fit_and_drops_corrupt_files(store, tmp_path):
    info, data = store.manifest.shards[0], store.fetch_shard_bytes(0)
    assert not DiskCache(tmp_path / "small", limit_bytes=info.bytes - 1).write(info, data)
    cache = DiskCache(tmp_path / "big", limit_bytes=10 * info.bytes)
    cache.write(info, data)
    path = cache.path(info)
    assert path.name == f"{info.sha256}.shard"  # content-addressed: stores can share a cache
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert cache.read(info) is None and not path.exists()


def test_cache_serves_shards_the_store_no_longer_has(tmp_path, fashion_mnist):
    url = str(tmp_path / "store")
    write_token_store(url, fashion_mnist, num_samples=120, num_shards=4)
    streaming = StreamingConfig(cache_dir=str(tmp_path / "cache"), retry=FAST_RETRY)
    data = TokenDataset(url, batch_size=8, order=OrderConfig(seed=1), streaming=streaming)
    first = epoch_sequence(make_loader(data))
    for info in data.manifest.shards:
        os.remove(Path(url) / info.path)
    assert epoch_sequence(make_loader(data)) == first  # epoch 0 again, entirely from the cache
    uncached = TokenDataset(
        url, batch_size=8, streaming=StreamingConfig(cache_limit_bytes=0, retry=FAST_RETRY)
    )
    with pytest.raises(ShardMissingError):
        list(uncached.iter_epoch(0))


def test_concurrent_readers_of_a_shard_leave_one_whole_cache_file(store, tmp_path):
    cache = DiskCache(tmp_path, limit_bytes=2**30)
    sources = [ShardSource(store.url, store.manifest, cache=cache) for _ in range(4)]
    results = [None] * 4

    def read(k: int) -> None:
        results[k] = sources[k].fetch(2)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({bytes(r) for r in results}) == 1
    assert [p.name for p in tmp_path.glob("*.shard")] == [f"{store.manifest.shards[2].sha256}.shard"]
    assert not list(tmp_path.glob(".tmp-*"))  # no half-written files left behind


def test_prefetcher_loads_in_order_and_never_beyond_its_depth(store):
    source = ShardSource(store.url, store.manifest)
    calls: list[int] = []
    lock = threading.Lock()

    def load(index: int):
        with lock:
            calls.append(index)
        return source.load(index)

    sequence = [3, 1, 4, 0, 5, 2]
    prefetcher = ShardPrefetcher(load, sequence, depth=2, threads=2)
    try:
        for position, index in enumerate(sequence):
            prefetcher.release_before(position)
            shard = prefetcher.get(position)
            assert len(shard.labels) == store.manifest.shards[index].num_samples
            with lock:
                assert len(calls) <= position + 2  # never more than `depth` ahead of the consumer
        with pytest.raises(IndexError, match="released"):
            prefetcher.get(0)
    finally:
        prefetcher.close()
    assert sorted(calls) == sorted(sequence) and calls[:2] == sequence[:2]


def test_retry_delays_grow_with_jitter_up_to_the_cap():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.delay_s(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jittered, so ranks do not retry in lockstep
