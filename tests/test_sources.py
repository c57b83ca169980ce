"""Image sources on real Fashion-MNIST: folder tree, WebDataset tars, Parquet (local and S3); bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from demo.example_data import FASHION_MNIST_CLASSES, write_image_folder
from demo.example_inputs import (
    BAD_IMAGE_KINDS,
    bad_image_bytes,
    write_parquet_files,
    write_webdataset_shards,
)
from pipeline.sources import ShardTask, load_class_map, plan_sources, prepare_shard

FOLDER_NAMES = tuple(f"{i:02d}-{name}" for i, name in enumerate(FASHION_MNIST_CLASSES))


def prepare_all(plan, resolution=32, storage_options=None, class_map=None):
    shards = [
        prepare_shard(t, resolution, storage_options=storage_options, class_map=class_map) for t in plan.tasks
    ]
    return (
        np.concatenate([s.images for s in shards]),
        np.concatenate([s.labels for s in shards]),
        [i for s in shards for i in s.image_ids],
        [r for s in shards for r in s.rejects],
    )


def test_folder_tree_plan_and_images(tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    images, labels = images[:50], labels[:50]
    root = write_image_folder(images, labels, tmp_path / "train")
    (tmp_path / "train" / FOLDER_NAMES[0] / ".DS_Store").write_bytes(b"junk")  # dot-files are not inputs
    plan = plan_sources(str(root), shard_size=16)
    assert plan.input_format == "folder" and plan.num_inputs == 50
    assert plan.class_names == FOLDER_NAMES
    assert [len(t.members) for t in plan.tasks] == [16, 16, 16, 2]
    assert plan == plan_sources(str(root), shard_size=16)  # a pure function of the listing
    assert ShardTask.from_json(plan.tasks[1].to_json()) == plan.tasks[1]
    got_images, got_labels, ids, rejects = prepare_all(plan)
    # Sorted listing: class folder, then file name (the original index).
    order = sorted(range(50), key=lambda i: (int(labels[i]), i))
    np.testing.assert_array_equal(got_images, images[order])  # 32 px PNG round trip is exact
    np.testing.assert_array_equal(got_labels, labels[order])
    assert ids[0] == f"{FOLDER_NAMES[int(labels[order[0]])]}/{order[0]:06d}.png" and not rejects


def test_folder_resize_is_the_reference_center_crop(tmp_path, fashion_mnist):
    from PIL import Image

    image = np.repeat(fashion_mnist[0][0][:, :, None], 3, axis=2)
    wide = np.asarray(Image.fromarray(image).resize((56, 28)))
    (tmp_path / "t" / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "t" / "a" / "wide.png")
    shard = prepare_shard(plan_sources(str(tmp_path / "t")).tasks[0], 16)
    assert shard.images.shape == (1, 16, 16, 3)
    resized = np.asarray(Image.fromarray(wide).resize((32, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(shard.images[0], resized[:, 8:24])


def test_class_map_files_and_errors(tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    root = write_image_folder(images[:20], labels[:20], tmp_path / "train")
    reversed_names = list(reversed(FOLDER_NAMES))
    (tmp_path / "map.json").write_text(json.dumps(reversed_names))
    mapping = load_class_map(str(tmp_path / "map.json"))
    plan = plan_sources(str(root), shard_size=100, class_map=mapping)
    assert plan.class_names == tuple(reversed_names)
    _, got_labels, ids, _ = prepare_all(plan)
    assert all(label == 9 - int(i.split("-")[0]) for label, i in zip(got_labels, ids))
    (tmp_path / "map.txt").write_text("\n".join(FOLDER_NAMES[:3]) + "\n")
    with pytest.raises(ValueError, match="not in the class map"):
        plan_sources(str(root), class_map=load_class_map(str(tmp_path / "map.txt")))
    (tmp_path / "bad.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(ValueError, match=r"indices must be 0\.\.1"):
        load_class_map(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_sources(str(tmp_path / "missing"))


@pytest.mark.s3
@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_tar_and_parquet_sources(kind, where, tmp_path, s3_server, fashion_mnist_small):
    images, labels = fashion_mnist_small
    images, labels = images[:45], labels[:45]
    url = str(tmp_path / kind) if where == "local" else s3_server.url(f"sources/{kind}")
    options = None if where == "local" else s3_server.storage_options
    if where == "local":
        (tmp_path / kind).mkdir()
    if kind == "webdataset":
        write_webdataset_shards(images, labels, url, per_shard=20, storage_options=options)
    else:
        write_parquet_files(images, labels, url, per_file=25, row_group_size=8, storage_options=options)
    plan = plan_sources(url, shard_size=10, storage_options=options)
    assert plan.input_format == kind
    if kind == "webdataset":
        assert len(plan.tasks) == 3 and plan.num_inputs == 3  # one shard per tar
        braced = plan_sources(url + "/shard-{000000..000001}.tar", storage_options=options)
        assert len(braced.tasks) == 2 and braced.input_format == "webdataset"
    else:
        assert [t.row_stop - t.row_start for t in plan.tasks] == [10, 10, 5, 10, 10]
        assert plan.num_inputs == 45
    got_images, got_labels, ids, rejects = prepare_all(plan, storage_options=options)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert ids[:2] == (
        ["shard-000000.tar/000000", "shard-000000.tar/000001"]
        if kind == "webdataset"
        else ["000000", "000001"]
    )
    assert not rejects


def test_every_bad_file_is_converted_or_rejected_with_its_reason(tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    root = write_image_folder(images[:12], labels[:12], tmp_path / "train")
    bad_dir = root / FOLDER_NAMES[3]
    bad_dir.mkdir(exist_ok=True)
    bad = bad_image_bytes(images[0])
    for kind, (name, _) in BAD_IMAGE_KINDS.items():
        (bad_dir / f"zz-{name}").write_bytes(bad[kind])
    (root / "README.txt").write_text("a file outside every class folder\n")
    plan = plan_sources(str(root), shard_size=5)
    got_images, got_labels, ids, rejects = prepare_all(plan)
    reasons = {r["image_id"].split("/")[-1]: r["reason"] for r in rejects}
    assert reasons == {
        "README.txt": "no_class_folder",
        "zz-truncated.jpg": "corrupt",
        "zz-random.jpg": "not_an_image",
        "zz-notes.txt": "not_an_image",
        "zz-empty.png": "empty_file",
        "zz-tiny.png": "too_small",
        "zz-bomb.png": reasons["zz-bomb.png"],
    }
    assert reasons["zz-bomb.png"] in {"decompression_bomb", "too_large"}
    kept = {name for kind, (name, keep) in BAD_IMAGE_KINDS.items() if keep}
    assert {i.split("/")[-1][3:] for i in ids if "/zz-" in i} == kept
    assert len(ids) == 12 + len(kept) and got_images.dtype == np.uint8 and got_images.shape[1:] == (32, 32, 3)
    # Converted images are the source garment in RGB; alpha is composited over white.
    source = images[0].astype(float)
    alpha = np.linspace(0, 255, 32 * 32).reshape(32, 32, 1) / 255  # as bad_image_bytes builds it
    over_white = alpha * source.mean(axis=2, keepdims=True) + (1 - alpha) * 255
    for index in (i for i, image_id in enumerate(ids) if "/zz-" in image_id):
        want = over_white if ids[index].endswith("alpha.png") or ids[index].endswith("rgba.png") else source
        error = np.abs(got_images[index] - want).mean()
        assert error < (8 if "cmyk" in ids[index] or "palette" in ids[index] else 1.5), ids[index]
        assert plan.class_names[got_labels[index]] == FOLDER_NAMES[3]
    assert all(r["source"].endswith(r["image_id"]) for r in rejects)


def test_truncated_tar_keeps_what_it_read_and_rejects_the_rest(tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    (tmp_path / "wds").mkdir()
    [url] = write_webdataset_shards(images[:10], labels[:10], str(tmp_path / "wds"), per_shard=10)
    data = (tmp_path / "wds" / "shard-000000.tar").read_bytes()
    for cut in (len(data) // 2, len(data) // 2 + 700):  # on a member boundary (512-byte block) and inside
        (tmp_path / "wds" / "shard-000000.tar").write_bytes(data[:cut])
        shard = prepare_shard(plan_sources(url).tasks[0], 32)
        assert 0 < len(shard.labels) < 10
        np.testing.assert_array_equal(shard.images, images[: len(shard.labels)])
        assert [r["reason"] for r in shard.rejects] == ["corrupt_tar"]


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_bad_bytes_inside_tars_and_parquet_are_rejected_per_sample(kind, tmp_path, fashion_mnist_small):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from pipeline.images import encode_png

    images, labels = fashion_mnist_small
    bad = bad_image_bytes(images[0])
    samples = [(f"good-{i}", encode_png(images[i]), int(labels[i])) for i in range(5)]
    samples += [(f"bad-{kind_}", data, 1) for kind_, data in bad.items()]
    samples.sort()
    path = tmp_path / ("data.tar" if kind == "webdataset" else "data.parquet")
    if kind == "webdataset":
        with open(path, "wb") as handle, wds.TarWriter(handle) as tar:
            for key, data, label in samples:
                tar.write({"__key__": key, "png": data, "cls": str(label)})
            tar.write({"__key__": "zz-no-label", "png": encode_png(images[1])})
    else:
        table = pa.table(
            {
                "image": [s[1] for s in samples],
                "label": [s[2] for s in samples],
                "image_id": [s[0] for s in samples],
            }
        )
        pq.write_table(table, path)
    shard = prepare_shard(plan_sources(str(path)).tasks[0], 32)
    kept = {f"bad-{k}" for k, (_, keep) in BAD_IMAGE_KINDS.items() if keep} | {f"good-{i}" for i in range(5)}
    assert {i.split("/")[-1] for i in shard.image_ids} == kept
    reasons = {r["image_id"].split("/")[-1]: r["reason"] for r in shard.rejects}
    expected = {f"bad-{k}" for k, (_, keep) in BAD_IMAGE_KINDS.items() if not keep}
    assert set(reasons) == expected | ({"zz-no-label"} if kind == "webdataset" else set())
    assert reasons["bad-text_file"] == "not_an_image" and reasons["bad-empty_file"] == "empty_file"
    if kind == "webdataset":
        assert reasons["zz-no-label"] == "no_label"


@pytest.mark.parametrize("kind", ["folder", "webdataset", "parquet"])
def test_a_task_that_finds_none_of_its_inputs_raises(kind, tmp_path, fashion_mnist_small):
    """Listed by the planner, gone where the task reads them (a node that does not share the driver's
    disk): not 'unreadable' rejects but InputNotVisibleError, naming the root and the count."""
    import shutil

    from pipeline.sources import InputNotVisibleError

    images, labels = fashion_mnist_small
    if kind == "folder":
        root = write_image_folder(images[:12], labels[:12], tmp_path / "in")
    elif kind == "webdataset":
        root = write_webdataset_shards(images[:12], labels[:12], str(tmp_path / "in"), per_shard=6)
    else:
        root = write_parquet_files(images[:12], labels[:12], str(tmp_path / "in"), per_file=6)
    plan = plan_sources(str(tmp_path / "in"), shard_size=6)
    shutil.rmtree(tmp_path / "in")  # what a node without the driver's files sees
    with pytest.raises(InputNotVisibleError, match="none of the") as raised:
        prepare_shard(plan.tasks[0], 32)
    assert raised.value.listed == (6 if kind == "folder" else 1) and raised.value.root == plan.tasks[0].root
    assert isinstance(raised.value, FileNotFoundError), root


def test_one_missing_file_among_found_ones_is_a_missing_reject(tmp_path, fashion_mnist_small):
    images, labels = fashion_mnist_small
    root = write_image_folder(images[:6], labels[:6], tmp_path / "in")
    plan = plan_sources(str(root), shard_size=6)
    gone = plan.tasks[0].members[2]
    (root / gone).unlink()  # deleted after it was listed
    shard = prepare_shard(plan.tasks[0], 32)
    assert len(shard.images) == 5
    assert [(r["image_id"], r["reason"]) for r in shard.rejects] == [(gone, "missing")]
