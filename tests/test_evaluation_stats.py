"""Streamed feature statistics: exact moments, a bounded uniform subset, a self-describing .npz."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.stats import FeatureStatistics, StatisticsAccumulator, check_comparable

INFO = {"name": "efficientnet-lite0", "fid_label": "FID-EffLite0 (not comparable with published FID)"}


def test_streamed_moments_equal_numpy_on_all_features(rng):
    features = rng.normal(loc=5.0, scale=3.0, size=(1000, 16)) @ rng.normal(size=(16, 16))
    accumulator = StatisticsAccumulator(16)
    for batch in np.array_split(features, 13):  # uneven batches
        accumulator.update(batch.astype(np.float32))
    reference = features.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(accumulator.mean, reference.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(accumulator.covariance, np.cov(reference, rowvar=False), rtol=1e-10, atol=1e-9)
    assert accumulator.count == 1000


def test_merging_workers_equals_one_pass(rng):
    features = rng.normal(size=(300, 8))
    whole, left, right = StatisticsAccumulator(8), StatisticsAccumulator(8), StatisticsAccumulator(8)
    whole.update(features)
    left.update(features[:120])
    right.update(features[120:])
    left.merge(right)
    np.testing.assert_allclose(left.mean, whole.mean)
    np.testing.assert_allclose(left.covariance, whole.covariance)
    assert left.count == 300 and len(left.kept) == 300


def test_reservoir_keeps_a_bounded_uniform_subset(rng):
    # Feature 0 is the row number, so the kept rows tell which inputs survived.
    rows = np.arange(20_000, dtype=np.float64)[:, None].repeat(2, axis=1)
    accumulator = StatisticsAccumulator(2, max_kept=1000, seed=1)
    for batch in np.array_split(rows, 37):
        accumulator.update(batch)
    kept = accumulator.kept[:, 0].astype(int)
    assert len(kept) == 1000 and len(set(kept)) == 1000  # bounded, no row twice
    # Uniform over the whole stream: each tenth of the input holds about a tenth of the subset.
    per_decile = np.bincount(kept // 2000, minlength=10)
    assert per_decile.min() > 60 and per_decile.max() < 140
    again = StatisticsAccumulator(2, max_kept=1000, seed=1)
    for batch in np.array_split(rows, 37):
        again.update(batch)
    np.testing.assert_array_equal(again.kept, accumulator.kept)  # reproducible


def test_npz_round_trip_keeps_everything(tmp_path, rng):
    accumulator = StatisticsAccumulator(4, max_kept=10)
    accumulator.update(rng.normal(size=(50, 4)))
    stats = accumulator.finalize(evaluator_info=INFO, minmax_stretch=True, resolution=32, source="folder:/x")
    stats.save(tmp_path / "ref.npz")
    loaded = FeatureStatistics.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)
    np.testing.assert_array_equal(loaded.kept_features, stats.kept_features)
    assert (loaded.count, loaded.evaluator, loaded.minmax_stretch, loaded.resolution, loaded.source) == (
        50,
        "efficientnet-lite0",
        True,
        32,
        "folder:/x",
    )
    assert loaded.evaluator_info == INFO


def test_loading_bad_files_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="fid-stats"):
        FeatureStatistics.load(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        FeatureStatistics.load(tmp_path / "other.npz")


def test_statistics_of_different_evaluators_are_not_compared(rng):
    accumulator = StatisticsAccumulator(4)
    accumulator.update(rng.normal(size=(10, 4)))
    lite = accumulator.finalize(evaluator_info=INFO, minmax_stretch=False)
    inception = accumulator.finalize(evaluator_info={**INFO, "name": "inception"}, minmax_stretch=False)
    stretched = accumulator.finalize(evaluator_info=INFO, minmax_stretch=True)
    check_comparable(lite, lite)
    with pytest.raises(ValueError, match="evaluator"):
        check_comparable(lite, inception)
    with pytest.raises(ValueError, match="minmax_stretch"):
        check_comparable(lite, stretched)
