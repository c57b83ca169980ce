"""Reports name the evaluator beside every number; scoring refuses statistics of another evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.report import EvaluationResult, write_report
from evaluation.scoring import score_samples
from evaluation.stats import StatisticsAccumulator

INCEPTION = {
    "name": "inception",
    "network": "TF-FID InceptionV3",
    "fid_label": "FID",
    "is_label": "IS",
    "comparable_with_published": True,
    "preprocessing": {"minmax_stretch": True},
}
SAMPLING = {"steps": 8, "schedule": "arccos", "cfg_weight": 3.0}


def _result(evaluator: dict) -> EvaluationResult:
    return EvaluationResult(
        fid=6.8, inception_score=180.0, inception_score_std=2.0, precision=0.8, recall=0.5, density=1.0,
        coverage=0.7, num_samples=50_000, evaluator=evaluator, reference={"count": 50_000}, sampling=SAMPLING,
    )  # fmt: skip


def test_report_files_label_every_number(tmp_path):
    written = write_report(_result(INCEPTION), tmp_path / "out")
    record = json.loads(Path(written.json_path).read_text())
    assert record["labelled_metrics"] == {
        "FID": 6.8, "IS": 180.0, "precision": 0.8, "recall": 0.5, "density": 1.0, "coverage": 0.7,
    }  # fmt: skip
    assert record["sampling"] == SAMPLING and record["evaluator"]["name"] == "inception"
    markdown = Path(written.markdown_path).read_text()
    assert "Comparable with published FID/IS: yes" in markdown and "minmax_stretch=True" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "metric" not in line]
    assert len(rows) == 6 and all("`inception`" in row and "steps=8" in row for row in rows)

    lite = {**INCEPTION, "name": "efficientnet-lite0", "comparable_with_published": False}
    lite["fid_label"] = "FID-EffLite0 (not comparable with published FID)"
    markdown = Path(write_report(_result(lite), tmp_path / "lite").markdown_path).read_text()
    assert "| FID-EffLite0 (not comparable with published FID) | 6.800 |" in markdown
    assert "Comparable with published FID/IS: **no**" in markdown


def test_scoring_refuses_other_evaluators_and_scores_identical_sets_well(rng):
    features, logits = rng.normal(size=(200, 8)), rng.normal(size=(200, 5))
    accumulator = StatisticsAccumulator(8)
    accumulator.update(features)
    reference = accumulator.finalize(evaluator_info=INCEPTION, minmax_stretch=False)
    scores = score_samples(
        reference, features, logits, evaluator_info=INCEPTION, minmax_stretch=False, is_splits=2
    )
    assert abs(scores.fid) < 1e-8
    assert scores.manifold.precision == 1.0 and scores.manifold.coverage == 1.0
    assert scores.prdc_samples_per_side == 200 and scores.prdc_splits == 1
    other = {**INCEPTION, "name": "efficientnet-lite0"}
    with pytest.raises(ValueError, match="evaluator"):
        score_samples(reference, features, logits, evaluator_info=other, minmax_stretch=False)
    with pytest.raises(ValueError, match="minmax_stretch"):
        score_samples(reference, features, logits, evaluator_info=INCEPTION, minmax_stretch=True)
    assert np.isfinite(scores.inception.mean)


def test_fewer_samples_than_features_take_the_eigh_route_without_warnings(rng):
    """At the quickstart's sample counts (hundreds of samples, 1,280 features) both covariances are
    singular: scipy's sqrtm would warn and lean on a diagonal offset; scoring takes the eigh route, which
    is exact on singular PSD matrices, and says so in the protocol it reports."""
    import warnings

    from evaluation.metrics import frechet_distance

    dims = 64
    reference_features = rng.normal(size=(40, dims))
    accumulator = StatisticsAccumulator(dims)
    accumulator.update(reference_features)
    reference = accumulator.finalize(evaluator_info=INCEPTION, minmax_stretch=False)
    features, logits = rng.normal(size=(30, dims)) + 0.5, rng.normal(size=(30, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = score_samples(
            reference, features, logits, evaluator_info=INCEPTION, minmax_stretch=False, is_splits=2
        )
    assert scores.fid_method == "eigh (covariance singular: 30 samples <= 64 features)"
    generated = StatisticsAccumulator(dims)
    generated.update(features)
    stats = generated.finalize(evaluator_info=INCEPTION, minmax_stretch=False)
    expected = frechet_distance(
        reference.mean, reference.covariance, stats.mean, stats.covariance, method="eigh"
    )
    assert scores.fid == pytest.approx(expected, rel=1e-9) and scores.fid > 0
    result = scores.to_result(
        evaluator=INCEPTION, reference={}, sampling={}, model={}, protocol={"fid_method": "sqrtm"}
    )
    assert result.protocol["fid_method"].startswith("eigh")

    many = rng.normal(size=(200, 8))  # more samples than features: the reference's sqrtm route
    small = StatisticsAccumulator(8)
    small.update(many)
    ref8 = small.finalize(evaluator_info=INCEPTION, minmax_stretch=False)
    assert score_samples(ref8, many, logits[:1].repeat(200, 0), evaluator_info=INCEPTION,
                         minmax_stretch=False, is_splits=2).fid_method == "sqrtm"  # fmt: skip
