"""`maskgit fid-stats` on real Fashion-MNIST from every input kind (folder, WebDataset, Parquet, S3)."""

from __future__ import annotations

import numpy as np
import pytest

from demo.example_data import write_image_folder
from demo.example_inputs import write_parquet_files, write_webdataset_shards
from evaluation.features import EfficientNetLite0Features
from evaluation.stats import FeatureStatistics
from jobs.cli import main

COUNT = 16


@pytest.fixture(scope="module")
def images_and_direct_stats(fashion_mnist_small):
    """16 real images and their statistics computed directly (no files, no readers)."""
    images, labels = fashion_mnist_small[0][:COUNT], fashion_mnist_small[1][:COUNT]
    features = EfficientNetLite0Features(device="cpu").__call__(images).features.astype(np.float64)
    return images, labels, features.mean(0), np.cov(features, rowvar=False)


def _fid_stats(source, out, *extra) -> FeatureStatistics:
    code = main(
        [
            "fid-stats",
            "--source",
            str(source),
            "--out",
            str(out),
            "--resolution",
            "32",
            "--no-progress",
            *extra,
        ]
    )
    assert code == 0
    return out


@pytest.mark.parametrize("kind", ["folder", "webdataset", "parquet"])
def test_fid_stats_of_every_input_kind_equal_direct_features(kind, images_and_direct_stats, tmp_path):
    images, labels, mean, covariance = images_and_direct_stats
    if kind == "folder":
        source = write_image_folder(images, labels, tmp_path / "tree")
    elif kind == "webdataset":
        write_webdataset_shards(images, labels, str(tmp_path / "tars"), per_shard=6)
        source = tmp_path / "tars"
    else:
        write_parquet_files(images, labels, str(tmp_path / "pq"), per_file=10, row_group_size=4)
        source = tmp_path / "pq"
    stats = FeatureStatistics.load(_fid_stats(source, tmp_path / "ref.npz", "--batch-size", "5"))
    assert stats.count == COUNT and stats.resolution == 32 and kind in stats.source
    assert stats.evaluator == "efficientnet-lite0" and stats.minmax_stretch is False
    assert stats.evaluator_info["fid_label"] == "FID-EffLite0 (not comparable with published FID)"
    # PNG round trip is lossless, so the streamed statistics are those of the images themselves.
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.covariance, covariance, rtol=1e-4, atol=1e-6)
    assert stats.kept_features.shape == (COUNT, 1280)


def test_fid_stats_limit_stretch_and_kept_subset(images_and_direct_stats, tmp_path):
    images, labels, *_ = images_and_direct_stats
    source = write_image_folder(images, labels, tmp_path / "tree")
    out = _fid_stats(source, tmp_path / "ref.npz", "--limit", "10", "--max-kept", "4", "--minmax-stretch")
    stats = FeatureStatistics.load(out)
    assert stats.count == 10 and len(stats.kept_features) == 4
    assert stats.minmax_stretch and stats.evaluator_info["preprocessing"]["minmax_stretch"]


@pytest.mark.s3
def test_fid_stats_reads_and_writes_s3(images_and_direct_stats, s3_server, tmp_path):
    import json

    images, labels, mean, _ = images_and_direct_stats
    url = s3_server.url("fid-stats/pq")
    write_parquet_files(images, labels, url, per_file=8, storage_options=s3_server.storage_options)
    options = json.dumps(s3_server.storage_options)
    out = s3_server.url("fid-stats/ref.npz")
    assert main(["fid-stats", "--source", url, "--out", out, "--resolution", "32", "--no-progress",
                 "--storage-options", options]) == 0  # fmt: skip
    import fsspec

    with fsspec.open(out, "rb", **s3_server.storage_options) as handle:
        stats = FeatureStatistics.load(handle)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5, atol=1e-6)


def test_fid_stats_errors_are_clear(tmp_path, capsys):
    assert main(["fid-stats", "--source", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = [
        "fid-stats",
        "--source",
        str(tmp_path),
        "--out",
        str(tmp_path / "x.npz"),
        "--evaluator",
        "inception",
    ]
    assert main([*args, "--inception-weights", str(tmp_path / "pt_inception.pth")]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    assert main(args) == 2
    assert "--inception-weights" in capsys.readouterr().err
