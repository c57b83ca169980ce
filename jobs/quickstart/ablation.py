"""A small sampling ablation in the reference's directions, at a fixed number of steps.

Rows vary one knob of the sampler against the reference settings (arccos, Gumbel 4.5, CFG 3, 8 steps):
the masking schedule (arccos / cosine / linear), Gumbel noise on the confidences (on / off), and
classifier-free guidance (0 / 3). Each row samples the same classes and seeds and reports:

* class accuracy: share of samples a classifier trained on the real data assigns to their class;
* FID against held-out real images under the given evaluator (EffLite0 in the quickstart);
* diversity: mean pairwise feature distance between samples of the same class, and the share of
  distinct token grids (Gumbel noise and lower guidance should raise both).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch


class AblationRow(NamedTuple):
    """One sampler setting and what it produced."""

    name: str
    schedule: str
    gumbel_temperature: float
    cfg_weight: float
    steps: int
    class_accuracy: float
    fid: float
    diversity: float
    distinct_grids: float


def default_settings(base) -> list[tuple[str, object]]:
    """(row name, SamplingConfig) pairs: the base setting and one change per row."""
    steps = dataclasses.replace(base, steps=8)
    return [
        ("reference (arccos)", steps),
        ("cosine schedule", dataclasses.replace(steps, schedule="cosine")),
        ("linear schedule", dataclasses.replace(steps, schedule="linear")),
        ("no Gumbel noise", dataclasses.replace(steps, gumbel_temperature=0.0)),
        ("no CFG (w = 0)", dataclasses.replace(steps, cfg_weight=0.0)),
    ]


def _diversity(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between same-class features, averaged over classes."""
    values = []
    for label in np.unique(labels):
        group = torch.from_numpy(features[labels == label]).double()
        if len(group) > 1:
            distances = torch.cdist(group, group)
            values.append(float(distances.sum() / (len(group) * (len(group) - 1))))
    return float(np.mean(values))


@torch.no_grad()
def run_ablation(
    pipe,
    classifier,
    evaluator,
    reference_stats,
    settings: list[tuple[str, object]],
    *,
    classes: list[int],
    per_class: int,
    seed: int = 0,
    batch_size: int = 100,
) -> list[AblationRow]:
    """Sample every setting with the same classes and seeds and score it.

    Args:
        pipe: a `generation.MaskGIT` (the trained transformer and its tokenizer).
        classifier: evaluation.classifier.Classifier trained on real images.
        evaluator: an evaluation.features extractor; reference_stats: FeatureStatistics of real images.
        settings: (name, SamplingConfig) pairs, e.g. `default_settings(stored_config)`.
        classes, per_class: which classes and how many samples each.
    """
    from evaluation.metrics import frechet_distance

    labels = np.repeat(np.asarray(classes), per_class)  # (N,)
    rows = []
    for name, config in settings:
        result = pipe.generate(labels, seeds=seed, sampling=config, batch_size=batch_size)
        images, grids = result.images, result.tokens.flatten(1).numpy()
        features = evaluator(images).features
        mean, covariance = (
            features.astype(np.float64).mean(0),
            np.cov(features.astype(np.float64), rowvar=False),
        )
        rows.append(
            AblationRow(
                name=name,
                schedule=config.schedule,
                gumbel_temperature=config.gumbel_temperature,
                cfg_weight=config.cfg_weight,
                steps=config.steps,
                class_accuracy=float((classifier.predict(images) == labels).mean()),
                fid=float(
                    frechet_distance(mean, covariance, reference_stats.mean, reference_stats.covariance)
                ),
                diversity=_diversity(features, labels),
                distinct_grids=len({g.tobytes() for g in grids}) / len(grids),
            )
        )
    return rows


def ablation_markdown(rows: list[AblationRow], fid_label: str, per_class: int, classes: int) -> str:
    """The ablation as a markdown table with a note on what was measured."""
    header = (
        "| setting | schedule | Gumbel | CFG | steps | class accuracy | "
        f"{fid_label} | diversity | distinct grids |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r.name} | {r.schedule} | {r.gumbel_temperature:g} | {r.cfg_weight:g} | {r.steps} | "
        f"{r.class_accuracy:.3f} | {r.fid:.2f} | {r.diversity:.3f} | {r.distinct_grids:.3f} |"
        for r in rows
    ]
    note = (
        f"\n\n{per_class} samples for each of {classes} classes per row, same seeds in every row. "
        "Class accuracy: a classifier trained on real images assigns the conditioned class. "
        "Diversity: mean pairwise feature distance within a class. FID is against held-out real images."
    )
    return "\n".join([header, *lines]) + note
