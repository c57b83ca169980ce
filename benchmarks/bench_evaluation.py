"""Benchmark: evaluation costs: evaluator throughput, FID's matrix square root, classifier training.

Three claims of the evaluation package are measured here, never asserted in tests:

1. Evaluator throughput (images/s) of `efficientnet-lite0` (224 px) and the TF-FID `inception`
   (299 px, randomly initialised: speed does not depend on the weights, which are not shipped),
   on 32 px Fashion-MNIST inputs, batch 32, after one untimed warm-up batch.
2. FID at D = 2048 (the Inception width): `scipy.linalg.sqrtm` (the reference's method) against the
   symmetric-eigendecomposition route (`method="eigh"`), on covariances of 4096 random samples, and
   the difference between their results.
3. The quickstart classifier (evaluation.classifier, preset "fashion-mnist-32"): training seconds
   and Fashion-MNIST test accuracy after 3 epochs on the 60k training images at 32x32 RGB.

Run: `python -m benchmarks.bench_evaluation [--quick] [--device cpu|cuda]`. `--quick` featurises
fewer images, uses D = 1024 for FID and trains the classifier 1 epoch on 10k images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import write_result


def _evaluator_rows(device: str, count: int) -> list[dict]:
    from demo.example_data import load_fashion_mnist, to_rgb
    from evaluation.features import EfficientNetLite0Features, InceptionV3Features
    from evaluation.inception import FIDInceptionV3

    images = to_rgb(load_fashion_mnist("test")[0][: count + 32], size=32)
    rows = []
    for name, extractor in (
        ("efficientnet-lite0", EfficientNetLite0Features(device=device, batch_size=32)),
        (
            "inception (random init)",
            InceptionV3Features(FIDInceptionV3().eval(), device=device, batch_size=32),
        ),
    ):
        extractor(images[:32])  # warm-up
        start = time.perf_counter()
        extractor(images[32 : 32 + count])
        seconds = time.perf_counter() - start
        rows.append(
            {"measure": f"{name} features", "value": count / seconds, "unit": "images/s", "device": device}
        )
    return rows


def _fid_rows(dim: int) -> list[dict]:
    from evaluation.metrics import frechet_distance

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = rng.normal(size=(4096, dim)) @ mixing
    b = rng.normal(loc=0.05, size=(4096, dim)) @ mixing
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    rows, values = [], {}
    for method in ("sqrtm", "eigh"):
        start = time.perf_counter()
        values[method] = frechet_distance(*stats[0], *stats[1], method=method)
        seconds = time.perf_counter() - start
        rows.append({"measure": f"FID D={dim} ({method})", "value": seconds, "unit": "s", "device": "cpu"})
    difference = abs(values["sqrtm"] - values["eigh"]) / abs(values["sqrtm"])
    rows.append(
        {
            "measure": f"FID D={dim} relative difference sqrtm vs eigh",
            "value": difference,
            "unit": "",
            "device": "cpu",
        }
    )
    return rows


def _classifier_rows(quick: bool) -> list[dict]:
    from demo.example_data import load_fashion_mnist, to_rgb
    from evaluation.classifier import classifier_accuracy, train_classifier

    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    count, epochs = (10_000, 1) if quick else (60_000, 3)
    rgb = to_rgb(train_images[:count], size=32)
    start = time.perf_counter()
    classifier = train_classifier(rgb, train_labels[:count], epochs=epochs, progress=False)
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(classifier, to_rgb(test_images, size=32), test_labels)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    label = f"classifier {count // 1000}k images x {epochs} epochs"
    return [
        {"measure": f"{label}: training", "value": seconds, "unit": "s", "device": device},
        {"measure": f"{label}: test accuracy", "value": accuracy, "unit": "", "device": device},
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    rows = _evaluator_rows(args.device, 32 if args.quick else 128)
    rows += _fid_rows(1024 if args.quick else 2048)
    rows += _classifier_rows(args.quick)
    return write_result(
        "evaluation",
        rows,
        columns=["measure", "value", "unit", "device"],
        notes="Inception speed with random weights (the TF-FID weights are not shipped); FID times are "
        "single-threaded BLAS/LAPACK as configured on this machine.",
    )


if __name__ == "__main__":
    main()
