"""Shared fixtures: real servers on 127.0.0.1 (SeaweedFS S3, Ray) and real data (Fashion-MNIST).

Every server a test needs is started here and stopped at the end of the session, so the suite runs on
a fresh machine with nothing but scripts/setup.sh done.
"""

from __future__ import annotations

import os

# Ray binds 127.0.0.1 everywhere with this set (shared/reference/stack.md, pitfall 5); keep test
# processes from oversubscribing the 2 cores of CI.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 gateway on 127.0.0.1 with a bucket, for the whole session."""
    from jobs.s3server import LocalS3Server

    server = LocalS3Server(data_dir=tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def fashion_mnist():
    """Fashion-MNIST train split: images (60000, 28, 28) uint8, labels (60000,) int64."""
    from pipeline.example_data import load_fashion_mnist

    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def fashion_mnist_small(fashion_mnist):
    """A balanced, seeded 200-image subset of Fashion-MNIST as RGB 32x32: (images, labels)."""
    from pipeline.example_data import balanced_subset, to_rgb

    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=20, seed=0)
    return to_rgb(images[index], size=32), labels[index]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
