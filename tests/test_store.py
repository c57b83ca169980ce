"""Token store round trips (both formats, local and S3), manifest validation, checksums, settings checks."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pyarrow as pa
import pytest

from pipeline.store import (
    FORMAT_VERSION,
    ShardChecksumError,
    ShardMissingError,
    StoreFormatError,
    StoreIncompleteError,
    StoreManifest,
    StoreSettingsError,
    TokenShard,
    TokenStoreWriter,
    decode_shard,
    encode_shard,
    open_token_store,
    shard_path,
)

GRID = (4, 4)
CLASS_NAMES = tuple(f"class-{i}" for i in range(10))


def make_shard(rng, n: int, views: int, labels=None) -> TokenShard:
    tokens = rng.integers(0, 65536, size=(n, views, *GRID), dtype=np.uint16)
    if n:
        tokens[0, 0, 0, 0], tokens[-1, -1, -1, -1] = 0, 65535  # the extremes of uint16 survive
    labels = np.asarray(labels if labels is not None else rng.integers(0, 10, n), np.int64)
    ids = np.array([f"img/{i:05d}.png" for i in range(n)])
    return TokenShard(tokens, labels, ids)


def make_manifest(store_format: str, views=("original",), shards=()) -> StoreManifest:
    return StoreManifest(
        store_format=store_format,
        codebook_size=65536,
        grid=GRID,
        resolution=16,
        views=tuple(views),
        tokenizer={"config": {"codebook_size": 65536}, "weights_sha256": "ab" * 32},
        class_names=CLASS_NAMES,
        shards=tuple(shards),
        sources=("file:///data/train",),
        settings={"shard_size": 8},
    )


def assert_shards_equal(got: TokenShard, want: TokenShard) -> None:
    assert got.tokens.dtype == np.uint16 and got.tokens.shape == want.tokens.shape
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert got.labels.dtype == np.int64
    np.testing.assert_array_equal(got.labels, want.labels)
    assert list(got.image_ids) == list(want.image_ids)


@pytest.mark.parametrize("store_format", ["arrow", "zarr"])
@pytest.mark.parametrize("views", [("original",), ("original", "hflip")])
def test_shard_bytes_round_trip_and_are_deterministic(store_format, views, rng, fashion_mnist_small):
    _, labels = fashion_mnist_small
    shard = make_shard(rng, 37, len(views), labels[:37])
    data = encode_shard(shard, store_format)
    assert encode_shard(shard, store_format) == data
    assert_shards_equal(decode_shard(data, make_manifest(store_format, views)), shard)


@pytest.mark.parametrize("store_format", ["arrow", "zarr"])
def test_empty_shard_round_trips(store_format, rng):
    shard = make_shard(rng, 0, 2)
    decoded = decode_shard(encode_shard(shard, store_format), make_manifest(store_format, VIEWS2))
    assert decoded.tokens.shape == (0, 2, *GRID) and len(decoded.labels) == len(decoded.image_ids) == 0


VIEWS2 = ("original", "hflip")


def test_zarr_shard_is_a_zip_zarr_v3_store_readable_by_zarr_zipstore(tmp_path, rng):
    import zarr
    from zarr.storage import ZipStore

    shard = make_shard(rng, 5, 2)
    path = tmp_path / "shard.zarr.zip"
    path.write_bytes(encode_shard(shard, "zarr"))
    with zipfile.ZipFile(path) as archive:
        assert json.loads(archive.read("zarr.json"))["zarr_format"] == 3
    group = zarr.open_group(ZipStore(path, mode="r"), mode="r")
    assert group["tokens"].dtype == np.uint16 and group["tokens"].shape == (5, *GRID)
    np.testing.assert_array_equal(group["tokens_hflip"][:], shard.tokens[:, 1])
    np.testing.assert_array_equal(group["labels"][:], shard.labels)


def test_arrow_shard_is_a_compressed_ipc_file_with_the_contract_columns(rng):
    shard = make_shard(rng, 6, 2)
    table = pa.ipc.open_file(pa.py_buffer(encode_shard(shard, "arrow"))).read_all()
    assert table.column_names == ["tokens", "tokens_hflip", "labels", "image_ids"]
    assert table.schema.field("tokens").type.value_type == pa.uint16()
    assert table.schema.field("tokens").type.shape == list(GRID)
    np.testing.assert_array_equal(
        table.column("tokens").combine_chunks().to_numpy_ndarray(), shard.tokens[:, 0]
    )
    # A highly repetitive shard compresses (zstd is on).
    flat = TokenShard(np.zeros((512, 1, *GRID), np.uint16), np.zeros(512, np.int64), np.array(["x"] * 512))
    assert len(encode_shard(flat, "arrow")) < 512 * 16 * 2 / 4


def test_encode_rejects_wrong_dtype_and_ragged_columns(rng):
    shard = make_shard(rng, 3, 1)
    with pytest.raises(StoreFormatError, match="uint16"):
        encode_shard(shard._replace(tokens=shard.tokens.astype(np.int32)), "arrow")
    with pytest.raises(StoreFormatError, match="length"):
        encode_shard(shard._replace(labels=shard.labels[:2]), "zarr")
    with pytest.raises(StoreFormatError, match="store_format"):
        encode_shard(shard, "parquet")


def write_store(url, rng, store_format, storage_options=None, sizes=(8, 8, 3)):
    writer = TokenStoreWriter(url, storage_options)
    writer.ensure_plan({"resolution": 16, "flip": True, "shard_size": 8})
    shards, commits = [], []
    for index in reversed(range(len(sizes))):  # any order: shard objects are independent
        shard = make_shard(rng, sizes[index], 2)
        rejects = [{"source": f"bad-{index}.jpg", "image_id": f"bad-{index}", "reason": "corrupt"}]
        writer.write_shard(index, shard, store_format, rejects if index != 1 else [], {"max_label": index})
        shards.insert(0, shard)
    assert writer.committed_indices() == set(range(len(sizes)))
    commits = [writer.read_commit(i) for i in range(len(sizes))]
    assert [c.extra["max_label"] for c in commits] == list(range(len(sizes)))
    with pytest.raises(StoreIncompleteError, match="incomplete"):
        open_token_store(url, storage_options)
    manifest = writer.commit(make_manifest(store_format, VIEWS2), commits)
    return manifest, shards


@pytest.mark.parametrize("store_format", ["arrow", "zarr"])
def test_local_store_round_trip(tmp_path, rng, store_format):
    url = str(tmp_path / "store")
    manifest, shards = write_store(url, rng, store_format)
    store = open_token_store(url)
    assert store.manifest == manifest
    assert store.manifest.num_samples == 19
    assert [s.path for s in store.manifest.shards] == [shard_path(i, store_format) for i in range(3)]
    for index, shard in enumerate(shards):
        assert_shards_equal(store.read_shard(index), shard)
    assert [r["source"] for r in store.read_rejects()] == ["bad-0.jpg", "bad-2.jpg"]
    on_disk = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert on_disk["format_version"] == FORMAT_VERSION and on_disk["num_samples"] == 19
    assert (
        on_disk["dtype"] == "uint16"
        and on_disk["grid"] == list(GRID)
        and on_disk["rejects"] == "rejects.jsonl"
    )
    assert StoreManifest.from_dict(on_disk) == manifest
    assert not list((tmp_path / "store" / "shards").glob(".tmp-*"))


@pytest.mark.s3
@pytest.mark.parametrize("store_format", ["arrow", "zarr"])
def test_s3_store_round_trip_and_corruption_is_caught(s3_server, rng, store_format):
    url = s3_server.url(f"test-store/{store_format}")
    options = s3_server.storage_options
    _, shards = write_store(url, rng, store_format, options)
    store = open_token_store(url, options)
    assert store.shard_url(1) == f"{url}/{shard_path(1, store_format)}"
    for index, shard in enumerate(shards):
        assert_shards_equal(store.read_shard(index), shard)
    # Overwrite shard 1 with shard 0's bytes: same format, wrong content -> named checksum failure.
    store.fs.pipe_file(f"{store.root}/{shard_path(1, store_format)}", store.fetch_shard_bytes(0))
    with pytest.raises(ShardChecksumError, match="shard 1"):
        store.read_shard(1)
    assert TokenStoreWriter(url, options).read_commit(1) is None  # a rerun would redo it
    store.fs.rm(f"{store.root}/{shard_path(2, store_format)}")
    with pytest.raises(ShardMissingError, match="shard 2"):
        store.read_shard(2)


def test_corrupt_local_shard_and_wrong_version_fail_clearly(tmp_path, rng):
    url = str(tmp_path / "store")
    write_store(url, rng, "arrow")
    path = tmp_path / "store" / shard_path(0, "arrow")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError, match="shard 0"):
        open_token_store(url).read_shard(0)
    manifest_path = tmp_path / "store" / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(StoreFormatError, match=r"99.*format_version 1"):
        open_token_store(url)


def test_not_a_store_says_so(tmp_path):
    with pytest.raises(StoreIncompleteError, match="not a token store"):
        open_token_store(str(tmp_path / "nothing-here"))


def test_decode_of_garbage_names_the_format(rng):
    with pytest.raises(StoreFormatError, match="zarr shard"):
        decode_shard(b"definitely not a zip", make_manifest("zarr"))


def test_plan_mismatch_names_the_setting(tmp_path):
    writer = TokenStoreWriter(str(tmp_path / "s"))
    assert writer.ensure_plan({"resolution": 256, "flip": False}) is False
    assert writer.ensure_plan({"resolution": 256, "flip": False}) is True
    with pytest.raises(StoreSettingsError, match=r"resolution=256 \(this run asks for 512\)"):
        writer.ensure_plan({"resolution": 512, "flip": False})


def test_manifest_validates_its_fields():
    with pytest.raises(StoreFormatError, match="views"):
        make_manifest("arrow", views=("hflip",))
    with pytest.raises(StoreFormatError, match="store_format"):
        make_manifest("hdf5")
    data = make_manifest("arrow").to_dict()
    with pytest.raises(StoreFormatError, match="num_samples"):
        StoreManifest.from_dict({**data, "num_samples": 5})


def test_manifest_json_round_trips_and_unknown_fields_are_named():
    manifest = make_manifest("arrow")
    data = json.loads(json.dumps(manifest.to_dict()))
    assert StoreManifest.from_dict(data) == manifest
    assert json.dumps(StoreManifest.from_dict(data).to_dict()) == json.dumps(data)
    assert list(data)[-1] == "num_samples" and isinstance(data["grid"], list)
    with pytest.raises(StoreFormatError, match=r"unknown manifest field\(s\) \['shard_count'\]"):
        StoreManifest.from_dict({**data, "shard_count": 3})
    shard = {"path": "shards/shard-000000.arrow", "num_samples": 1, "sha256": "s", "bytes": 1, "md5": "x"}
    with pytest.raises(StoreFormatError, match=r"unknown shard record field\(s\) \['md5'\]"):
        StoreManifest.from_dict({**data, "shards": [shard], "num_samples": shard["num_samples"]})
