"""Score generated samples against reference statistics: FID, IS, precision/recall/density/coverage.

The reference protocol (valeoai v1): FID between the samples' features and the reference set's,
IS over 10 splits of the samples' logits, and k-NN (k = 3) precision/recall/density/coverage
averaged over splits of 10k real and 10k generated features. The real side of precision/recall
uses the bounded random subset kept in the statistics file; both sides are cut to the same size
(the generated side shuffled first: samples are stored class by class) so neither set's k-NN radii
are biased by a size difference.

Shapes: M generated samples, D feature width, C logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from evaluation.metrics import (
    InceptionScore,
    PrecisionRecall,
    frechet_distance,
    inception_score,
    precision_recall_density_coverage,
)
from evaluation.report import EvaluationResult
from evaluation.stats import FeatureStatistics, StatisticsAccumulator, check_comparable


class Scores(NamedTuple):
    """Every number of an evaluation and how the k-NN metrics were sampled."""

    fid: float
    inception: InceptionScore
    manifold: PrecisionRecall
    num_samples: int
    prdc_samples_per_side: int
    prdc_splits: int
    fid_method: str  # the route that computed the FID, and why when it is not the one asked for

    def to_result(
        self,
        *,
        evaluator: dict,
        reference: dict,
        sampling: dict,
        model: dict,
        protocol: dict,
        extra: dict | None = None,
    ) -> EvaluationResult:
        """The report record: these numbers with what made them (protocol gains the k-NN sampling)."""
        return EvaluationResult(
            fid=self.fid,
            inception_score=self.inception.mean,
            inception_score_std=self.inception.std,
            precision=self.manifold.precision,
            recall=self.manifold.recall,
            density=self.manifold.density,
            coverage=self.manifold.coverage,
            num_samples=self.num_samples,
            evaluator=evaluator,
            reference=reference,
            sampling=sampling,
            model=model,
            protocol={
                **protocol,
                "prdc_samples_per_side": self.prdc_samples_per_side,
                "prdc_splits": self.prdc_splits,
                "fid_method": self.fid_method,
            },
            extra=extra or {},
        )


def score_samples(
    reference: FeatureStatistics,
    features: np.ndarray,
    logits: np.ndarray,
    *,
    evaluator_info: dict,
    minmax_stretch: bool,
    is_splits: int = 10,
    prdc_k: int = 3,
    prdc_max_per_split: int = 10_000,
    fid_method: str = "sqrtm",
    seed: int = 0,
) -> Scores:
    """FID / IS / PRDC of generated features (M, D) and logits (M, C) against `reference`.

    Raises:
        ValueError: the reference was made with another evaluator or preprocessing, or too few samples.
    """
    features = np.asarray(features, np.float32)
    accumulator = StatisticsAccumulator(features.shape[1], max_kept=0)
    accumulator.update(features)
    generated = accumulator.finalize(evaluator_info=evaluator_info, minmax_stretch=minmax_stretch)
    check_comparable(reference, generated)
    method, route = fid_method, fid_method
    fewest = min(reference.count, len(features))
    if fid_method == "sqrtm" and fewest <= features.shape[1]:
        # With no more samples than feature dimensions a covariance is singular: scipy's sqrtm of the
        # product then warns and needs the diagonal offset, while the eigh route takes square roots of
        # the symmetric PSD halves, which is exact for singular ones (the same trace otherwise).
        method = "eigh"
        route = f"eigh (covariance singular: {fewest} samples <= {features.shape[1]} features)"
    fid = frechet_distance(
        reference.mean, reference.covariance, generated.mean, generated.covariance, method=method
    )
    inception = inception_score(logits, splits=is_splits, seed=seed)
    per_side = min(len(reference.kept_features), len(features))
    shuffled = features[np.random.default_rng(seed).permutation(len(features))[:per_side]]
    splits = max(1, math.ceil(per_side / prdc_max_per_split))
    manifold = precision_recall_density_coverage(
        reference.kept_features[:per_side], shuffled, k=prdc_k, splits=splits
    )
    return Scores(fid, inception, manifold, len(features), per_side, splits, route)
