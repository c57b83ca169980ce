"""A small sampling ablation in the reference's directions, and a comparison of the two samplers.

`default_settings`: rows vary one knob of the sampler against the stored settings at 8 steps. For the
confidence order (v1): the masking schedule (arccos / cosine / linear), Gumbel noise on the
confidences (on / off) and classifier-free guidance (0 / stored); for the Halton order (v2): a
randomised order and guidance off. `comparison_settings`: the Halton order against the confidence
order at 4, 8, 16 and 32 steps. Each row samples the same classes and seeds and reports:

* class accuracy: share of samples a classifier trained on the real data assigns to their class;
* FID against held-out real images under the given evaluator (EffLite0 in the quickstart), scored by
  `evaluation.scoring.score_samples` as `maskgit evaluate` scores it;
* diversity: mean pairwise feature distance between samples of the same class, and the share of
  distinct token grids (Gumbel noise and lower guidance should raise both);
* images/s of the whole generation (sampling + decoding) on this machine, and transformer forward
  passes per image, counting the unconditional CFG half of a step as a pass of its own.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch


class AblationRow(NamedTuple):
    """One sampler setting and what it produced."""

    name: str
    order: str
    schedule: str
    gumbel_temperature: float
    cfg_weight: float
    steps: int
    class_accuracy: float
    fid: float
    diversity: float
    distinct_grids: float
    images_per_s: float
    forwards_per_image: float


COMPARISON_STEPS = (4, 8, 16, 32)


def default_settings(base) -> list[tuple[str, object]]:
    """(row name, SamplingConfig) pairs: the base setting and one change per row."""
    steps = dataclasses.replace(base, steps=8)
    if base.order == "halton":
        return [
            ("stored (Halton order)", steps),
            ("randomised Halton order", dataclasses.replace(steps, randomize_order=True)),
            ("no CFG (w = 0)", dataclasses.replace(steps, cfg_weight=0.0)),
        ]
    return [
        ("reference (arccos)", steps),
        ("cosine schedule", dataclasses.replace(steps, schedule="cosine")),
        ("linear schedule", dataclasses.replace(steps, schedule="linear")),
        ("no Gumbel noise", dataclasses.replace(steps, gumbel_temperature=0.0)),
        ("no CFG (w = 0)", dataclasses.replace(steps, cfg_weight=0.0)),
    ]


def comparison_settings(base) -> list[tuple[str, object]]:
    """The v2 Halton sampler (Halton order, its "halton" step table) against the confidence order (v1's
    arccos table), at 4, 8, 16 and 32 steps; every other knob as stored (the confidence rows keep its
    Gumbel noise, which Halton ignores)."""
    rows = []
    for order in ("halton", "confidence"):
        for steps in COMPARISON_STEPS:
            schedule = "halton" if order == "halton" else "arccos"
            config = dataclasses.replace(base, order=order, steps=steps, schedule=schedule)
            rows.append((f"{order}, {steps} steps", config))
    return rows


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
    import time

    from weights import unwrap_model

    labels = np.repeat(np.asarray(classes), per_class)  # (N,)
    forwarded = [0]  # sequences through the transformer: a CFG step of B images counts 2B

    def count(_module, args) -> None:
        forwarded[0] += int(args[0].shape[0])

    hook = unwrap_model(pipe.transformer).register_forward_pre_hook(count)
    rows = []
    try:
        for name, config in settings:
            forwarded[0], start = 0, time.perf_counter()
            result = pipe.generate(labels, seeds=seed, sampling=config, batch_size=batch_size)
            seconds = time.perf_counter() - start
            rows.append(_score(name, config, result, labels, seconds, forwarded[0], classifier, evaluator,
                               reference_stats, seed))  # fmt: skip
    finally:
        hook.remove()
    return rows


def _score(name, config, result, labels, seconds, forwarded, classifier, evaluator, reference_stats, seed):
    """One AblationRow from a `Generation` of `labels` and what it cost.

    FID is `evaluation.scoring.score_samples`'s, the number `maskgit evaluate` reports, so it refuses
    reference statistics made with another evaluator or preprocessing.
    """
    from evaluation.scoring import score_samples

    images, grids = result.images, result.tokens.flatten(1).numpy()
    batch = evaluator(images)  # features (N, D), logits (N, C)
    scores = score_samples(
        reference_stats, batch.features, batch.logits, evaluator_info=evaluator.info.to_dict(),
        minmax_stretch=bool(evaluator.info.preprocessing["minmax_stretch"]), seed=seed,
    )  # fmt: skip
    features = batch.features.astype(np.float64)
    return AblationRow(
        name=name,
        order=config.order,
        schedule=config.schedule,
        gumbel_temperature=config.gumbel_temperature,
        cfg_weight=config.cfg_weight,
        steps=config.steps,
        class_accuracy=float((classifier.predict(images) == labels).mean()),
        fid=scores.fid,
        diversity=_diversity(features, labels),
        distinct_grids=len({g.tobytes() for g in grids}) / len(grids),
        images_per_s=len(labels) / seconds,
        forwards_per_image=forwarded / len(labels),
    )


def ablation_markdown(rows: list[AblationRow], fid_label: str, per_class: int, classes: int) -> str:
    """The ablation as a markdown table with a note on what was measured."""
    header = (
        "| setting | order | schedule | Gumbel | CFG | steps | class accuracy | "
        f"{fid_label} | diversity | distinct grids | images/s | forward passes / image |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r.name} | {r.order} | {r.schedule} | {r.gumbel_temperature:g} | {r.cfg_weight:g} | {r.steps} | "
        f"{r.class_accuracy:.3f} | {r.fid:.2f} | {r.diversity:.3f} | {r.distinct_grids:.3f} | "
        f"{r.images_per_s:.1f} | {r.forwards_per_image:.1f} |"
        for r in rows
    ]
    note = (
        f"\n\n{per_class} samples for each of {classes} classes per row, same seeds in every row. "
        "Class accuracy: a classifier trained on real images assigns the conditioned class. "
        "Diversity: mean pairwise feature distance within a class. FID is against held-out real images. "
        "Forward passes count an unconditional CFG half as a pass; images/s includes decoding."
    )
    return "\n".join([header, *lines]) + note
