"""Helpers for the token dataset tests: real token stores built from Fashion-MNIST with the real writer.

Tokens are a deterministic function of real images (no VQGAN needed: the loader only sees ids):
each 28x28 image is average-pooled to a 7x7 grid and quantised to 64 levels, so the codebook has 64
entries; the hflip view is the same function of the mirrored image. Shards get uneven sizes, as a
tokenization job with rejected images would write.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from demo.example_data import FASHION_MNIST_CLASSES, balanced_subset
from pipeline.store import ShardCommit, StoreManifest, TokenShard, TokenStoreWriter

GRID = (7, 7)
CODEBOOK_SIZE = 64


def tokens_from_images(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, 7, 7) uint16 tokens in [0, 64): 4x4 mean pooling, 64 levels."""
    pooled = images.reshape(len(images), 7, 4, 7, 4).astype(np.float64).mean(axis=(2, 4))
    return np.minimum(pooled / 4, CODEBOOK_SIZE - 1).astype(np.uint16)


def shard_sizes(num_samples: int, num_shards: int, seed: int = 0) -> list[int]:
    """Uneven shard sizes (±40% around the mean) summing to num_samples."""
    weights = np.random.default_rng(seed).uniform(0.6, 1.4, num_shards)
    sizes = np.floor(weights / weights.sum() * num_samples).astype(int)
    sizes[-1] += num_samples - sizes.sum()
    return [int(s) for s in sizes]


def real_token_samples(fashion_mnist, num_samples: int, views: int = 2):
    """(tokens (n, V, 7, 7) uint16, labels (n,) int64, image_ids (n,) str) from real images."""
    images, labels = fashion_mnist
    index = balanced_subset(labels, per_class=-(-num_samples // 10), seed=1)[:num_samples]
    original = tokens_from_images(images[index])
    flipped = tokens_from_images(images[index][:, :, ::-1])
    tokens = np.stack([original, flipped][:views], axis=1)
    return tokens, labels[index].astype(np.int64), np.array([f"fmnist-train-{i}" for i in index])


def write_token_store(
    url: str,
    fashion_mnist,
    *,
    num_samples: int = 480,
    num_shards: int = 12,
    store_format: str = "arrow",
    views: int = 2,
    storage_options: dict | None = None,
) -> StoreManifest:
    """Write a committed store of real Fashion-MNIST tokens with `pipeline.store`'s writer."""
    tokens, labels, ids = real_token_samples(fashion_mnist, num_samples, views)
    writer = TokenStoreWriter(url, storage_options)
    commits, start = [], 0
    for index, size in enumerate(shard_sizes(num_samples, num_shards)):
        part = slice(start, start + size)
        info = writer.write_shard(index, TokenShard(tokens[part], labels[part], ids[part]), store_format)
        commits.append(ShardCommit(info, []))
        start += size
    manifest = StoreManifest(
        store_format=store_format,
        codebook_size=CODEBOOK_SIZE,
        grid=GRID,
        resolution=28,
        views=("original", "hflip")[:views],
        tokenizer={"config": {"kind": "mean-pool-quantiser", "levels": CODEBOOK_SIZE}, "weights_sha256": ""},
        class_names=FASHION_MNIST_CLASSES,
        shards=(),
        sources=("fashion-mnist:train",),
    )
    return writer.commit(manifest, commits)


def epoch_sequence(loader, epochs: int = 1) -> list[int]:
    """Sample ids a StatefulLoader yields over `epochs` whole epochs, in order."""
    return [int(i) for _ in range(epochs) for batch in loader for i in batch.sample_ids]


def interleave_ranks(per_rank: list[list[list[int]]]) -> list[int]:
    """Global sequence from per-rank lists of batches: step by step, rank by rank."""
    steps = {len(batches) for batches in per_rank}
    assert len(steps) == 1, f"ranks yielded different numbers of batches: {steps}"
    return [i for step in range(steps.pop()) for batches in per_rank for i in batches[step]]


def duplicates(values) -> dict:
    return {k: c for k, c in Counter(values).items() if c > 1}
