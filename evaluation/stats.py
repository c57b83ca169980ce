"""Feature statistics for FID and precision/recall, accumulated in a stream and stored as `.npz`.

A reference set (50k ImageNet val images in the reference protocol) never has to sit in memory:
`StatisticsAccumulator` folds feature batches into a float64 mean and covariance with Chan et al.'s
pairwise update (exact, numerically stable, and mergeable across workers), and keeps a bounded,
seeded uniform random subset of the features (reservoir sampling) for precision/recall, which needs
the vectors themselves.

A statistics file records which evaluator made it and with which preprocessing (`evaluator`,
`evaluator_info`, `minmax_stretch`, `resolution`), so FID is never computed between features of two
different networks or preprocessings (`check_comparable`).

Shapes: D feature width, K kept features (K <= max_kept).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

STATS_FORMAT_VERSION = 1
DEFAULT_MAX_KEPT = 50_000


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean, covariance and a feature subset of one image set under one evaluator.

    Attributes:
        mean: (D,) float64.
        covariance: (D, D) float64, unbiased (divided by count - 1).
        count: number of images accumulated.
        kept_features: (K, D) float32 uniform random subset, for precision/recall.
        evaluator: evaluator name ("inception" or "efficientnet-lite0").
        evaluator_info: the evaluator's `EvaluatorInfo.to_dict()` (network, labels, preprocessing).
        minmax_stretch: whether the reference's per-image stretch was applied.
        resolution: side the images were center-cropped/resized to before the evaluator, or None.
        source: where the images came from (free text, for the report).
    """

    mean: np.ndarray
    covariance: np.ndarray
    count: int
    kept_features: np.ndarray
    evaluator: str
    evaluator_info: dict
    minmax_stretch: bool
    resolution: int | None = None
    source: str = ""

    def describe(self) -> dict:
        """What a report says about these statistics (no arrays)."""
        return {
            "count": self.count,
            "evaluator": self.evaluator,
            "minmax_stretch": self.minmax_stretch,
            "resolution": self.resolution,
            "source": self.source,
            "kept_features": len(self.kept_features),
        }

    def save(self, path_or_file) -> None:
        """Write an `.npz` (a path, or a binary file object such as an fsspec handle)."""
        metadata = {
            "format_version": STATS_FORMAT_VERSION,
            "count": self.count,
            "evaluator": self.evaluator,
            "evaluator_info": self.evaluator_info,
            "minmax_stretch": self.minmax_stretch,
            "resolution": self.resolution,
            "source": self.source,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mu=self.mean,
            sigma=self.covariance,
            features=self.kept_features,
            metadata=np.frombuffer(json.dumps(metadata).encode(), np.uint8),
        )
        if isinstance(path_or_file, str | Path):
            Path(path_or_file).parent.mkdir(parents=True, exist_ok=True)
            Path(path_or_file).write_bytes(buffer.getvalue())
        else:
            path_or_file.write(buffer.getvalue())

    @classmethod
    def load(cls, path_or_file) -> FeatureStatistics:
        """Read a file written by `save` (no pickles are loaded).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a statistics file of this format.
        """
        if isinstance(path_or_file, str | Path) and not Path(path_or_file).is_file():
            raise FileNotFoundError(
                f"statistics file not found: {path_or_file} (make one with `maskgit fid-stats`)"
            )
        try:
            with np.load(path_or_file, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path_or_file} is not an .npz statistics file: {error}") from None
        missing = {"mu", "sigma", "features", "metadata"} - set(arrays)
        if missing:
            raise ValueError(
                f"{path_or_file} is not a statistics file of this project (missing {sorted(missing)})"
            )
        metadata = json.loads(arrays["metadata"].tobytes().decode())
        if metadata.get("format_version") != STATS_FORMAT_VERSION:
            raise ValueError(
                f"{path_or_file}: unsupported statistics format {metadata.get('format_version')}"
            )
        return cls(
            mean=arrays["mu"].astype(np.float64),
            covariance=arrays["sigma"].astype(np.float64),
            count=int(metadata["count"]),
            kept_features=arrays["features"].astype(np.float32),
            evaluator=metadata["evaluator"],
            evaluator_info=metadata["evaluator_info"],
            minmax_stretch=bool(metadata["minmax_stretch"]),
            resolution=metadata.get("resolution"),
            source=metadata.get("source", ""),
        )


def check_comparable(reference: FeatureStatistics, generated: FeatureStatistics) -> None:
    """Refuse to compare statistics made by different evaluators or preprocessings.

    Raises:
        ValueError: naming the field that differs.
    """
    for field in ("evaluator", "minmax_stretch"):
        ours, theirs = getattr(reference, field), getattr(generated, field)
        if ours != theirs:
            raise ValueError(
                f"reference statistics were made with {field}={ours!r} but the samples with "
                f"{field}={theirs!r}; recompute one of them with the same setting"
            )
    if reference.mean.shape != generated.mean.shape:
        raise ValueError(f"feature widths differ: {reference.mean.shape} vs {generated.mean.shape}")


class StatisticsAccumulator:
    """Streamed float64 mean/covariance plus a reservoir of features.

    Args:
        feature_dim: D.
        max_kept: most features kept for precision/recall (uniform random subset of all seen).
        seed: reservoir sampling seed (the subset is reproducible for the same input order).
    """

    def __init__(self, feature_dim: int, *, max_kept: int = DEFAULT_MAX_KEPT, seed: int = 0):
        self.feature_dim = feature_dim
        self.max_kept = max_kept
        self.count = 0
        self.mean = np.zeros(feature_dim, np.float64)
        self.scatter = np.zeros((feature_dim, feature_dim), np.float64)  # sum of centred outer products
        self.kept = np.zeros((0, feature_dim), np.float32)
        self._rng = np.random.default_rng(seed)

    def update(self, features: np.ndarray) -> None:
        """Fold in a batch of features (B, D)."""
        batch = np.asarray(features, np.float64)
        if batch.ndim != 2 or batch.shape[1] != self.feature_dim:
            raise ValueError(f"expected (B, {self.feature_dim}) features, got {batch.shape}")
        if not len(batch):
            return
        batch_mean = batch.mean(axis=0)
        centred = batch - batch_mean
        self._merge(len(batch), batch_mean, centred.T @ centred)
        self._reservoir(batch.astype(np.float32))

    def _merge(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        # Chan, Golub & LeVeque's pairwise combination of (count, mean, scatter).
        total = self.count + count
        delta = mean - self.mean
        self.scatter += scatter + np.outer(delta, delta) * (self.count * count / total)
        self.mean += delta * (count / total)
        self.count = total

    def _reservoir(self, batch: np.ndarray) -> None:
        seen_before = self.count - len(batch)
        room = max(0, self.max_kept - len(self.kept))
        if room:
            self.kept = np.concatenate([self.kept, batch[:room]])
        rest = batch[room:]
        if not len(rest):
            return
        # Algorithm R: item number i (0-based) replaces a random slot with probability max_kept / (i + 1).
        positions = seen_before + room + np.arange(len(rest))
        slots = (self._rng.random(len(rest)) * (positions + 1)).astype(np.int64)
        chosen = slots < self.max_kept
        # Fancy assignment keeps the last write for repeated slots, as the sequential algorithm does.
        self.kept[slots[chosen]] = rest[chosen]

    def merge(self, other: StatisticsAccumulator) -> None:
        """Fold in another accumulator's moments (e.g. from another worker); kept features are pooled
        and subsampled to `max_kept` in proportion to the counts."""
        if other.count == 0:
            return
        mine = self.count
        self._merge(other.count, other.mean, other.scatter)
        pooled = np.concatenate([self.kept, other.kept])
        if len(pooled) > self.max_kept:
            weights = np.concatenate(
                [
                    np.full(len(self.kept), mine / max(len(self.kept), 1)),
                    np.full(len(other.kept), other.count / len(other.kept)),
                ]
            )
            index = self._rng.choice(len(pooled), self.max_kept, replace=False, p=weights / weights.sum())
            pooled = pooled[np.sort(index)]
        self.kept = pooled

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (D, D), as `np.cov`."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self.scatter / (self.count - 1)

    def finalize(
        self,
        *,
        evaluator_info: dict,
        minmax_stretch: bool,
        resolution: int | None = None,
        source: str = "",
    ) -> FeatureStatistics:
        """The statistics so far, with what made them."""
        return FeatureStatistics(
            mean=self.mean.copy(),
            covariance=self.covariance,
            count=self.count,
            kept_features=self.kept.copy(),
            evaluator=evaluator_info["name"],
            evaluator_info=evaluator_info,
            minmax_stretch=minmax_stretch,
            resolution=resolution,
            source=source,
        )
