"""FID, Inception Score and precision/recall/density/coverage against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from evaluation.metrics import (
    frechet_distance,
    inception_score,
    precision_recall_density_coverage,
)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _frechet_by_eigh(mu1, sigma1, mu2, sigma2) -> float:
    # Independent route: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix (eigh only).
    root = _sqrt_psd(sigma1)
    inner = np.linalg.eigvalsh(root @ sigma2 @ root)
    diff = mu1 - mu2
    return float(
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    )


def test_frechet_distance_matches_independent_float64_computation(rng):
    a = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    b = rng.normal(loc=0.3, size=(300, 24)) @ rng.normal(size=(24, 24))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    ours = frechet_distance(*stats[0], *stats[1])
    assert ours > 1.0
    assert ours == pytest.approx(_frechet_by_eigh(*stats[0], *stats[1]), rel=1e-8)
    assert frechet_distance(*stats[0], *stats[1], method="eigh") == pytest.approx(ours, rel=1e-8)


def test_frechet_distance_of_one_dimensional_gaussians_is_closed_form():
    # For 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s1, s2.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_singular(rng):
    features = rng.normal(size=(20, 64))  # fewer samples than dimensions: singular covariance
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    assert np.linalg.matrix_rank(sigma) < 64
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-5
    assert abs(frechet_distance(mu, sigma, mu, sigma, method="eigh")) < 1e-5


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _inception_score_by_hand(logits: list[list[float]], splits: int) -> list[float]:
    scores, n = [], len(logits)
    for index in range(splits):
        part = logits[index * n // splits : (index + 1) * n // splits]
        probs = []
        for row in part:
            exps = [math.exp(v) for v in row]
            probs.append([e / sum(exps) for e in exps])
        marginal = [sum(p[c] for p in probs) / len(probs) for c in range(len(probs[0]))]
        kl = [sum(p[c] * math.log(p[c] / marginal[c]) for c in range(len(p))) for p in probs]
        scores.append(math.exp(sum(kl) / len(kl)))
    return scores


def test_inception_score_matches_hand_computation_on_known_logits():
    logits = [
        [2.0, 0.0, -1.0],
        [0.0, 3.0, 0.5],
        [1.0, 1.0, 1.0],
        [-2.0, 0.0, 4.0],
        [0.5, -0.5, 0.0],
        [3.0, 1.0, 0.0],
    ]
    expected = _inception_score_by_hand(logits, splits=2)
    result = inception_score(np.array(logits), splits=2, shuffle=False)
    assert result.per_split == pytest.approx(expected, rel=1e-12)
    assert result.mean == pytest.approx(np.mean(expected))
    assert result.std == pytest.approx(np.std(expected))


def test_inception_score_limits():
    confident = np.eye(10)[np.arange(1000) % 10] * 50.0  # sure, and every split balanced over 10 classes
    assert inception_score(confident, shuffle=False).mean == pytest.approx(10.0, rel=1e-6)
    undecided = np.zeros((1000, 10))
    assert inception_score(undecided).mean == pytest.approx(1.0)
    one_class = np.eye(10)[np.zeros(1000, int)] * 50.0  # sure but always the same class
    assert inception_score(one_class).mean == pytest.approx(1.0)


def test_inception_score_shuffles_class_ordered_samples():
    # Samples written class by class: unshuffled contiguous splits each see one class (IS ~ 1).
    ordered = np.eye(10)[np.repeat(np.arange(10), 100)] * 50.0
    assert inception_score(ordered, shuffle=False).mean == pytest.approx(1.0)
    assert inception_score(ordered).mean > 9.0


def _prdc_brute_force(real, fake, k):
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(real, fake)
    precision = np.mean([any(d[i, j] < real_radii[i] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(d[i, j] < fake_radii[j] for j in range(len(fake))) for i in range(len(real))])
    density = np.mean([sum(d[i, j] < real_radii[i] for i in range(len(real))) for j in range(len(fake))]) / k
    coverage = np.mean([d[i].min() < real_radii[i] for i in range(len(real))])
    return precision, recall, density, coverage


def test_prdc_matches_brute_force_loops(rng):
    real = rng.normal(size=(60, 5))
    fake = rng.normal(loc=0.4, scale=1.3, size=(50, 5))
    ours = precision_recall_density_coverage(real, fake, k=3, block=16)  # blocks smaller than the sets
    assert tuple(ours) == pytest.approx(_prdc_brute_force(real, fake, 3))
    assert 0 < ours.precision < 1 and 0 < ours.recall < 1


def test_prdc_on_constructed_sets(rng):
    cluster_a = rng.normal(size=(50, 8))
    cluster_b = rng.normal(size=(50, 8)) + 100.0
    real = np.concatenate([cluster_a, cluster_b])

    # Fakes reproduce one of the two modes exactly: every fake is real-looking, half the data is covered.
    half = precision_recall_density_coverage(real, cluster_a.copy(), k=3)
    assert half.precision == 1.0
    assert half.recall == 0.5
    assert half.coverage == 0.5

    # Fakes equal to the real set: everything is precise and covered.
    same = precision_recall_density_coverage(real, real.copy(), k=3)
    assert (same.precision, same.recall, same.coverage) == (1.0, 1.0, 1.0)

    # Fakes far from all data: nothing.
    far = precision_recall_density_coverage(real, rng.normal(size=(40, 8)) + 1000.0, k=3)
    assert tuple(far) == (0.0, 0.0, 0.0, 0.0)

    # Mode collapse onto one point near the data: precise, covers only the real balls around it, and no
    # real point lies inside the fakes' (tiny) balls.
    centre = real[0] + 0.01
    collapsed = centre + 1e-6 * rng.normal(size=(30, 8))
    margin = np.linalg.norm(real - centre, axis=1) - np.sort(cdist(real, real), axis=1)[:, 3]
    assert np.abs(margin).min() > 1e-3  # no real ball boundary runs through the collapsed cluster
    containing = int((margin < 0).sum())
    assert 1 < containing < 100
    result = precision_recall_density_coverage(real, collapsed, k=3)
    assert result.precision == 1.0
    assert result.recall == 0.0
    assert result.coverage == pytest.approx(containing / 100)
    assert result.density == pytest.approx(containing / 3)


def test_prdc_splits_average_the_parts(rng):
    real, fake = rng.normal(size=(80, 4)), rng.normal(size=(60, 4))
    whole = precision_recall_density_coverage(real, fake, splits=2)
    parts = [
        precision_recall_density_coverage(real[:40], fake[:30]),
        precision_recall_density_coverage(real[40:], fake[30:]),
    ]
    assert tuple(whole) == pytest.approx(tuple(np.mean(parts, axis=0)))


def test_prdc_needs_more_samples_than_k():
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall_density_coverage(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
