"""The streaming token dataset against a real S3 server (SeaweedFS on 127.0.0.1).

Covers streaming through the bounded disk cache, recovery when the server goes down and comes back
mid-epoch (no sample lost or doubled), fork-safety of DataLoader workers after the parent used S3,
and clear errors for a corrupt object, a missing object and another format version.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid

import numpy as np
import pytest
import s3fs
from test_dataset_support import epoch_sequence, write_token_store

from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
from pipeline.sample_order import EpochOrder
from pipeline.shard_cache import DiskCache, RetryPolicy
from pipeline.stateful_loader import make_loader
from pipeline.store import ShardChecksumError, ShardMissingError, StoreFormatError, open_token_store

pytestmark = pytest.mark.s3

NUM_SAMPLES = 480
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


def new_store(s3_server, fashion_mnist, **kwargs) -> str:
    url = s3_server.url("dataset-tests", uuid.uuid4().hex)
    write_token_store(url, fashion_mnist, storage_options=s3_server.storage_options, **kwargs)
    return url


@pytest.fixture(scope="module")
def s3_store(s3_server, fashion_mnist):
    return new_store(s3_server, fashion_mnist, num_samples=NUM_SAMPLES)


def expected_order(url, storage_options, epoch, seed, window) -> list[int]:
    manifest = open_token_store(url, storage_options).manifest
    order = EpochOrder([s.num_samples for s in manifest.shards], seed=seed, epoch=epoch, window_shards=window)
    return order.sample_ids(0, manifest.num_samples).tolist()


def test_streams_from_s3_through_a_bounded_cache(s3_server, s3_store, tmp_path):
    options = s3_server.storage_options
    store = open_token_store(s3_store, options)
    tokens = np.concatenate([store.read_shard(i).tokens for i in range(store.num_shards)])
    largest = max(s.bytes for s in store.manifest.shards)
    cache = StreamingConfig(
        cache_dir=str(tmp_path / "cache"), cache_limit_bytes=3 * largest, prefetch_shards=1
    )
    data = TokenDataset(
        s3_store,
        batch_size=16,
        order=OrderConfig(seed=9, shuffle_window=2),
        streaming=cache,
        storage_options=options,
    )
    sequence = []
    for batch in make_loader(data):
        ids, views = batch.sample_ids.numpy(), batch.flipped.numpy().astype(int)
        np.testing.assert_array_equal(batch.tokens.numpy(), tokens[ids, views])
        sequence += ids.tolist()
    assert sequence == expected_order(s3_store, options, 0, seed=9, window=2)
    on_disk = DiskCache(tmp_path / "cache", 3 * largest).size_bytes()
    assert 0 < on_disk <= 3 * largest
    assert "secret" not in repr(data) and s3_server.secret_key not in repr(data)


def test_loader_recovers_when_s3_restarts_mid_epoch(s3_server, s3_store, caplog):
    # botocore's own retries off, so the outage reaches the loader's retry loop under test.
    options = {**s3_server.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    streaming = StreamingConfig(
        cache_limit_bytes=0,  # every shard comes from the server, on demand
        prefetch_shards=0,
        fetch_threads=1,
        retry=RetryPolicy(max_attempts=15, base_delay_s=0.2, max_delay_s=2.0),
    )
    data = TokenDataset(
        s3_store,
        batch_size=16,
        order=OrderConfig(seed=3, shuffle_window=1),
        streaming=streaming,
        storage_options=options,
    )
    loader = make_loader(data)
    iterator = iter(loader)
    sequence = [int(i) for _ in range(5) for i in next(iterator).sample_ids]
    s3_server.stop()  # the server is down while the loader needs its next shards ...
    restart = threading.Timer(3.0, s3_server.start)  # ... and comes back 3 s later
    restart.start()
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.shard_cache"):
            sequence += [int(i) for batch in iterator for i in batch.sample_ids]
    finally:
        restart.join()
        s3_server.start()  # no-op when already running; keeps the session's server up if the timer failed
    assert any("retrying" in record.getMessage() for record in caplog.records), "the outage was never seen"
    assert sequence == expected_order(s3_store, options, 0, seed=3, window=1)
    assert loader.state_dict()["epoch"] == 1


def test_fork_workers_are_safe_after_the_parent_used_s3(s3_server, s3_store, tmp_path):
    # fsspec#835: an async S3 client inherited by a forked worker can deadlock. The parent here has a
    # live client and prefetch threads from reading in-process when it forks its workers.
    options = s3_server.storage_options
    streaming = StreamingConfig(cache_dir=str(tmp_path / "cache"))
    data = TokenDataset(s3_store, batch_size=16, streaming=streaming, storage_options=options)
    in_process = make_loader(data)
    first = [int(i) for _, batch in zip(range(3), in_process) for i in batch.sample_ids]
    workers = make_loader(data, num_workers=2, multiprocessing_context="fork", timeout_s=120)
    workers.load_state_dict(in_process.state_dict())
    rest = epoch_sequence(workers)
    assert first + rest == expected_order(s3_store, options, 0, seed=0, window=8)


def test_corrupt_object_on_s3_is_named(s3_server, fashion_mnist):
    url = new_store(s3_server, fashion_mnist, num_samples=120, num_shards=4)
    options = s3_server.storage_options
    data = TokenDataset(
        url,
        batch_size=8,
        streaming=StreamingConfig(cache_limit_bytes=0, retry=FAST_RETRY),
        storage_options=options,
    )
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    key = f"{url.removeprefix('s3://')}/{data.manifest.shards[1].path}"
    raw = bytearray(fs.cat_file(key))
    raw[100] ^= 0xFF
    fs.pipe_file(key, bytes(raw))
    with pytest.raises(ShardChecksumError, match=r"shard 1 \(s3://.*shard-000001.arrow\) fails its sha256"):
        list(data.iter_epoch(0))


def test_missing_object_on_s3_is_named(s3_server, fashion_mnist):
    url = new_store(s3_server, fashion_mnist, num_samples=120, num_shards=4)
    options = s3_server.storage_options
    data = TokenDataset(
        url,
        batch_size=8,
        streaming=StreamingConfig(cache_limit_bytes=0, retry=FAST_RETRY),
        storage_options=options,
    )
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.rm(f"{url.removeprefix('s3://')}/{data.manifest.shards[3].path}")
    with pytest.raises(ShardMissingError, match=r"shard 3 \(s3://.*shard-000003.arrow\) is missing"):
        list(data.iter_epoch(0))


def test_other_format_version_on_s3_is_refused(s3_server, fashion_mnist):
    url = new_store(s3_server, fashion_mnist, num_samples=40, num_shards=2)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    key = f"{url.removeprefix('s3://')}/manifest.json"
    manifest = json.loads(fs.cat_file(key))
    manifest["format_version"] = 7
    fs.pipe_file(key, json.dumps(manifest).encode())
    with pytest.raises(StoreFormatError, match="format_version is 7; this code reads format_version 1"):
        TokenDataset(url, batch_size=8, storage_options=s3_server.storage_options)
