"""S3 under faults: the tokenize job, the streaming loader and checkpoints through `demo.s3_fault_proxy`.

5 % of the requests (SlowDown 503s, InternalError 500s, connection resets mid-body, bodies cut short
by a clean close, 2 s stalls and 2 s drips, a sixth each) fail on their way between our clients and
the real S3 server; the retries configured in
`storage.filesystem` must hide them completely: nothing lost, nothing doubled, the same bytes as a
fault-free run. Each test asserts that every kind of fault was really injected. Request paths are
fixed, so the seeded fault decisions are the same in every run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from test_dataset_support import write_token_store

from demo.example_data import balanced_subset, to_rgb, write_image_folder
from demo.s3_fault_proxy import FAULT_KINDS, FaultConfig, S3FaultProxy
from pipeline.dataset import OrderConfig, StreamingConfig, TokenDataset
from pipeline.stateful_loader import make_loader
from pipeline.store import open_token_store
from storage.filesystem import S3_CONFIG_DEFAULTS, url_to_fs

pytestmark = pytest.mark.s3

FAULT_RATE = 0.05
STALL_S = 2.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def proxy(s3_server):
    with S3FaultProxy.for_server(s3_server) as running:
        yield running


class Faulted:
    """`with Faulted(proxy, seed):` injects 5 % faults inside the block; `.counts` afterwards."""

    def __init__(self, proxy: S3FaultProxy, seed: int):
        self.proxy, self.seed, self.counts = proxy, seed, None

    def __enter__(self) -> Faulted:
        self.proxy.reset_counts()
        self.proxy.faults = FaultConfig.mixed(FAULT_RATE, seed=self.seed, stall_s=STALL_S)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.proxy.faults = FaultConfig()
        self.counts = self.proxy.counts
        self.seconds = time.monotonic() - self.started
        print(f"\n{self.counts} in {self.seconds:.1f} s")

    def assert_every_kind_injected(self) -> None:
        counts = self.counts
        assert min(getattr(counts, kind) for kind in FAULT_KINDS) > 0, f"not every fault kind ran: {counts}"
        assert counts.faults <= 0.15 * counts.requests, counts  # the rate is what was asked, give or take


def test_retry_defaults_apply_to_s3_urls_and_yield_to_the_caller():
    caller = {"key": "k", "skip_instance_cache": True, "config_kwargs": {"read_timeout": 5}}
    fs, path = url_to_fs("s3://bucket/store", caller)  # builds the client, sends nothing
    assert path == "bucket/store" and fs.key == "k"
    assert fs.config_kwargs == {**S3_CONFIG_DEFAULTS, "read_timeout": 5}  # the caller's key wins
    assert caller["config_kwargs"] == {"read_timeout": 5}  # the caller's options are not modified
    assert S3_CONFIG_DEFAULTS["retries"] == {"max_attempts": 5, "mode": "standard"}
    assert S3_CONFIG_DEFAULTS["read_timeout"] > STALL_S  # a stall is waited out, not failed
    local, _ = url_to_fs("/local/store", {"auto_mkdir": True})
    assert local.auto_mkdir and not hasattr(local, "config_kwargs")


# --- the proxy itself ----------------------------------------------------------------------------------


def test_proxy_relays_streaming_uploads_ranges_head_and_keeps_connections_alive(proxy, s3_server):
    import pyarrow.fs as pafs
    import s3fs

    proxy.reset_counts()
    data = np.random.default_rng(0).bytes(12 << 20)
    bucket = s3_server.bucket
    # pyarrow's S3 client (the AWS C++ SDK) uploads with `Transfer-Encoding: chunked` + aws-chunked
    # bodies and trailing checksums, in a multipart upload for 12 MiB; s3fs with Content-Length bodies.
    arrow = pafs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_override=proxy.endpoint_url,
        scheme="http",
        region="us-east-1",
    )
    with arrow.open_output_stream(f"{bucket}/s3-faults/wire/arrow.bin") as handle:
        handle.write(data)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **proxy.storage_options)
    fs.pipe_file(f"{bucket}/s3-faults/wire/s3fs.bin", data)
    for name in ("arrow.bin", "s3fs.bin"):
        path = f"{bucket}/s3-faults/wire/{name}"
        assert fs.info(path)["size"] == len(data)  # HEAD
        assert fs.cat_file(path, start=5_000_000, end=5_000_100) == data[5_000_000:5_000_100]  # range GET
        assert sha256(fs.cat_file(path)) == sha256(data)
        with arrow.open_input_file(path) as handle:
            handle.seek(len(data) - 10)
            assert handle.read(10) == data[-10:]
    counts = proxy.counts
    assert counts.faults == 0 and counts.connections < counts.requests / 2, counts  # keep-alive


def test_each_fault_kind_on_the_wire(proxy, s3_server):
    import http.client

    def get(path: str = "/s3-faults/wire/none"):
        connection = http.client.HTTPConnection("127.0.0.1", int(proxy.endpoint_url.rsplit(":", 1)[1]))
        connection.request("GET", path)
        return connection.getresponse()

    try:
        proxy.faults = FaultConfig(slowdown_rate=1.0, retry_after_s=1)
        answer = get()
        body = answer.read().decode()
        assert answer.status == 503 and answer.getheader("Retry-After") == "1"
        assert "<Code>SlowDown</Code>" in body and "<Resource>/s3-faults/wire/none</Resource>" in body
        proxy.faults = FaultConfig(reset_rate=1.0)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            get().read()  # the server's answer (an unsigned request: 403), cut mid-body
        proxy.faults = FaultConfig(internal_error_rate=1.0)
        answer = get()
        assert answer.status == 500 and "<Code>InternalError</Code>" in answer.read().decode()
        proxy.faults = FaultConfig(truncate_rate=1.0)
        with pytest.raises(http.client.IncompleteRead):
            get().read()  # fewer bytes than Content-Length, then a clean close
        proxy.faults = FaultConfig(stall_rate=1.0, stall_s=0.5)
        started = time.monotonic()
        assert get().status == 403 and time.monotonic() - started >= 0.5  # forwarded, answered late
        proxy.faults = FaultConfig(drip_rate=1.0, drip_s=0.5, drip_pause_s=0.05)
        started = time.monotonic()
        answer = get()
        assert answer.status == 403 and b"<Error>" in answer.read()  # all of it, in pieces
        assert time.monotonic() - started >= 0.4
    finally:
        proxy.faults = FaultConfig()
    with pytest.raises(ValueError, match="sum to"):
        FaultConfig(0.5, 0.5, 0.5)


# --- (a) the tokenize job writes a token store through the faults ------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_tokenize_job_writes_an_exact_store_through_faults(
    proxy, s3_server, ray_local, fashion_mnist, fashion_vqgan, tmp_path
):
    from jobs.tokenize import TokenizeOptions, run_tokenize
    from pipeline.sources import plan_sources, prepare_shard
    from pipeline.tokenize import TokenizeBatch

    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=30, seed=3)  # 300 real images, 12 shards of 25
    tree = write_image_folder(to_rgb(images[index], size=32), labels[index], tmp_path / "tree")
    inputs = s3_server.url("s3-faults", "tokenize-input")
    fsspec.filesystem("s3", **s3_server.storage_options).put(f"{tree}/", inputs + "/", recursive=True)
    expected_ids = {p.relative_to(tree).as_posix() for p in tree.rglob("*.png")}

    output = s3_server.url("s3-faults", "tokenize-store")
    options = TokenizeOptions(
        input=inputs,
        output=output,
        tokenizer=str(fashion_vqgan),
        resolution=32,
        flip=True,
        shard_size=25,
        batch_size=25,
        threads_per_actor=1,
        storage_options=proxy.storage_options,
        progress=False,
    )
    with Faulted(proxy, seed=1) as faulted:  # the inputs are read and the store written through faults
        summary = run_tokenize(options)
    faulted.assert_every_kind_injected()
    assert summary.images == 300 and summary.rejects == 0 and summary.shards == summary.shards_written == 12

    # The fault-free reference: the job's plan and stages as plain callables, straight from the server.
    so = s3_server.storage_options  # verify on the server itself, past the proxy
    plan = plan_sources(inputs, shard_size=25, storage_options=so)
    encode = TokenizeBatch(str(fashion_vqgan), flip=True, batch_size=25)
    store = open_token_store(output, so)
    manifest = store.manifest
    assert manifest.num_samples == 300 and len(manifest.shards) == len(plan.tasks) == 12
    fs = fsspec.filesystem("s3", **so)
    listed = sorted(p.rsplit("/", 1)[1] for p in fs.ls(output.removeprefix("s3://") + "/shards"))
    assert listed == sorted(s.path.rsplit("/", 1)[1] for s in manifest.shards)  # no stray objects
    ids = []
    for task, info in zip(plan.tasks, manifest.shards):
        assert sha256(fs.cat_file(f"{output}/{info.path}")) == info.sha256  # the bytes the manifest names
        shard, clean = store.read_shard(task.index), prepare_shard(task, 32, storage_options=so)
        np.testing.assert_array_equal(shard.tokens, encode({"images": clean.images})["tokens"])
        np.testing.assert_array_equal(shard.labels, clean.labels)
        np.testing.assert_array_equal(shard.image_ids, clean.image_ids)
        ids += [str(image_id) for image_id in shard.image_ids]
    assert len(ids) == len(set(ids)) == 300  # nothing doubled...
    assert {image_id.split("tokenize-input/", 1)[-1] for image_id in ids} == expected_ids  # ...or lost


# --- (b) the streaming loader reads a whole epoch through the faults ---------------------------------

LOADER_SHARDS = 240


@pytest.fixture(scope="module")
def many_shard_store(s3_server, fashion_mnist):
    """1,920 real token samples in 240 shards (so an epoch makes ~240 requests: one GET a shard)."""
    url = s3_server.url("s3-faults", "loader-store")
    so = s3_server.storage_options
    write_token_store(url, fashion_mnist, num_samples=1920, num_shards=LOADER_SHARDS, storage_options=so)
    return url


def read_epoch(url: str, storage_options: dict):
    data = TokenDataset(
        url,
        batch_size=64,
        order=OrderConfig(seed=5, shuffle_window=16, flip=True),
        streaming=StreamingConfig(cache_limit_bytes=0, prefetch_shards=8),  # every shard from S3
        storage_options=storage_options,
    )
    loader = make_loader(data)
    ids, tokens, flips = [], [], []
    for batch in loader:
        ids += batch.sample_ids.tolist()
        flips += batch.flipped.tolist()
        tokens.append(batch.tokens.numpy())
    return ids, flips, np.concatenate(tokens)


def test_loader_reads_a_whole_epoch_through_faults(proxy, s3_server, many_shard_store, caplog):
    clean_ids, clean_flips, clean_tokens = read_epoch(many_shard_store, s3_server.storage_options)
    with Faulted(proxy, seed=2) as faulted, caplog.at_level(logging.WARNING, logger="pipeline.shard_cache"):
        ids, flips, tokens = read_epoch(many_shard_store, proxy.storage_options)
    faulted.assert_every_kind_injected()
    # botocore and s3fs absorbed every fault: the loader's own outage loop never had to step in.
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], caplog.text
    assert faulted.counts.requests >= LOADER_SHARDS
    assert ids == clean_ids and flips == clean_flips  # same samples, same order
    assert len(ids) == len(set(ids)) == 1920  # each sample exactly once
    np.testing.assert_array_equal(tokens, clean_tokens)


# --- (c) training checkpoints and a model folder, saved and resumed through the faults ---------------


def tiny_transformer():
    from transformer import MaskTransformer, TransformerConfig

    torch.manual_seed(0)
    config = TransformerConfig(
        codebook_size=64, grid_size=8, num_classes=10, hidden_size=64, depth=2, num_heads=4, mlp_size=128
    )
    return MaskTransformer(config)


def save_step_files(model, optimizer, step: int, directory: Path) -> dict[str, str]:
    """What two ZeRO ranks write for one step (DeepSpeed's file names); returns {relative path: sha256}."""
    tokens = torch.randint(0, 64, (4, 8, 8))
    loss = model(tokens, torch.arange(4)).float().square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    state = optimizer.state_dict()["state"]
    files = {
        "mp_rank_00_model_states.pt": {"module": model.state_dict(), "step": step},
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": {k: v for k, v in state.items() if k % 2 == 0},
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": {k: v for k, v in state.items() if k % 2 == 1},
    }
    for rank in (0, 1):
        (directory / f"rank{rank}").mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, value in files.items():
        rank = 1 if name.startswith("zero_pp_rank_1") else 0
        path = directory / f"rank{rank}" / f"global_step{step}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(value, path)
        digests[f"global_step{step}/{name}"] = sha256(path.read_bytes())
    return digests


CHECKPOINT_STEPS = 12  # ~25 requests a step (PUTs, listings, deletes of the pruned step)


def test_checkpoints_and_model_folder_round_trip_through_faults(proxy, s3_server, tmp_path):
    from jobs.train.checkpoints import CheckpointMeta, CheckpointStore
    from transformer import load_transformer, save_transformer

    model = tiny_transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    uri = s3_server.url("s3-faults", "run", "checkpoints")
    folder = s3_server.url("s3-faults", "run", "export")
    with Faulted(proxy, seed=3) as faulted:
        store = CheckpointStore(uri, proxy.storage_options)  # what a training worker builds
        for step in range(1, CHECKPOINT_STEPS + 1):
            local = tmp_path / f"save-{step}"
            digests = save_step_files(model, optimizer, step, local)
            for rank in (0, 1):
                store.upload_rank_files(step, local / f"rank{rank}", rank)
            meta = CheckpointMeta(step, 2, 2, {"epoch": 0, "offset": step * 64}, False, {}, {})
            store.commit(meta)
            store.prune(keep=2)
        # Resume, as a restarted job does: a fresh store object, the latest step, its files.
        resumed = CheckpointStore(uri, proxy.storage_options)
        latest = resumed.latest_step()
        restored = resumed.download(latest, tmp_path / "resume")
        # weights/ opens the folder through storage/, which adds the retry defaults itself.
        saved_folder = save_transformer(model, folder, storage_options=proxy.storage_options)
        loaded = load_transformer(saved_folder, storage_options=proxy.storage_options)
    faulted.assert_every_kind_injected()

    assert latest == CHECKPOINT_STEPS and resumed.read_meta(latest).loader_state["offset"] == latest * 64
    got = {p.relative_to(restored).as_posix(): sha256(p.read_bytes()) for p in restored.rglob("*.pt")}
    assert got == digests  # every byte of the last step, as written
    state = torch.load(restored / f"global_step{latest}" / "mp_rank_00_model_states.pt", weights_only=True)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(state["module"][name], tensor, rtol=0, atol=0)
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    kept = {p.removeprefix(uri.removeprefix("s3://") + "/").split("/")[0] for p in fs.find(uri)}
    assert kept == {"latest.json", f"step-{latest - 1:08d}", f"step-{latest:08d}"}  # older steps pruned
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    local_folder = save_transformer(model, tmp_path / "export")
    assert sha256(fs.cat_file(f"{folder}/model.safetensors")) == sha256(
        (Path(local_folder) / "model.safetensors").read_bytes()
    )
