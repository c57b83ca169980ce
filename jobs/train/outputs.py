"""What a training run shows a person: progress bar, metrics, sample grids, loss curve (rank 0).

The run directory may be local or on object storage. Files are written to a local directory first
(the run directory itself when it is local) and copied to the object store at every log and at the
end, so a run on a cluster leaves its metrics and pictures next to its checkpoints. The local staging
directory of a remote run is a temp dir that `close()` removes, on success and on failure alike (after a
last copy to the run directory): nothing of a run stays in $TMPDIR.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem

from jobs.train.config import TrainJobConfig
from jobs.train.metrics_log import (
    MetricsLog,
    describe_step_time,
    plot_loss_curve,
    read_metrics,
    step_time_breakdown,
)
from storage.filesystem import url_to_fs

logger = logging.getLogger(__name__)


class RunOutputs:
    """Rank 0's view of the run directory: metrics log, progress bar, pictures, sync to storage."""

    def __init__(self, config: TrainJobConfig, rank: int = 0):
        self.config = config
        self.fs, self.remote_root = url_to_fs(config.out, config.storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._staging = None if self.is_local else tempfile.TemporaryDirectory(prefix="maskgit-run-")
        self.local_dir = Path(config.out) if self._staging is None else Path(self._staging.name)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        if not self.is_local and self.fs.exists(f"{self.remote_root}/metrics.jsonl"):
            # Resuming on another machine: keep the metrics written before the interruption.
            self.fs.get_file(f"{self.remote_root}/metrics.jsonl", str(self.local_dir / "metrics.jsonl"))
        self.metrics = MetricsLog(self.local_dir)
        self.bar = None
        self.finished = False

    def start_progress(self, initial: int, total: int) -> None:
        from tqdm.auto import tqdm

        # A Ray worker's stderr is a log file forwarded line by line: redraw every 30 s there, not 10×/s.
        interval = 0.1 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(
            total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=interval
        )

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.log(step, metrics)
        if self.bar is not None:
            self.advance(step)
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.3f}",
                acc=f"{metrics['masked_accuracy']:.3f}",
                tok_s=f"{metrics['tokens_per_s']:.0f}",
                refresh=False,  # shown at the bar's next redraw (mininterval), not forced every log
            )
        self.sync()

    def picture_path(self, name: str) -> Path:
        (self.local_dir / "samples").mkdir(exist_ok=True)
        return self.local_dir / "samples" / name

    def sync(self) -> None:
        """Copy the local files to the run directory on object storage (no-op when local)."""
        if self.is_local:
            return
        for path in self.local_dir.rglob("*"):
            if path.is_file():
                relative = path.relative_to(self.local_dir).as_posix()
                self.fs.put_file(str(path), f"{self.remote_root}/{relative}")

    def finish(self) -> Path | None:
        """Close the bar and the logs, write the loss curve PNG, sync; returns the PNG path."""
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        records = read_metrics(self.metrics.path)
        png = plot_loss_curve(records, self.local_dir / "loss_curve.png") if records else None
        breakdown = step_time_breakdown(records)
        if breakdown:  # where rank 0's step time went (jobs.train.worker.PHASES)
            (self.local_dir / "step_time.json").write_text(json.dumps(breakdown, indent=1))
            logger.info("%s (rank 0; step_time.json)", describe_step_time(breakdown))
        self.sync()
        self.finished = True
        return png

    def close(self) -> None:
        """Release the logs and remove a remote run's local staging dir; safe after `finish()` and after a
        failure (then the files logged so far are copied to the run directory first, if it is reachable)."""
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        if self._staging is None:
            return
        try:
            if not self.finished:
                self.sync()
        except Exception as error:  # a failing run's own error matters more than its last metrics copy
            logger.warning("could not copy the run's logs to %s: %s", self.config.out, error)
        finally:
            self._staging.cleanup()


def sample_grid_pipeline(module: torch.nn.Module, config: TrainJobConfig):
    """A `generation.MaskGIT` around the model being trained and the run's tokenizer (read from its
    path or URL on this worker), sampling with the run's exported sampling settings."""
    from generation import MaskGIT
    from tokenizer import load_tokenizer
    from transformer.config import stored_sampling_config

    tokenizer = load_tokenizer(config.tokenizer, storage_options=config.storage_options or None)
    return MaskGIT(module, tokenizer.to(next(module.parameters()).device),
                   sampling_defaults=stored_sampling_config(config.sampling))  # as exported  # fmt: skip


def write_sample_grid(pipe, step: int, outputs: RunOutputs | None) -> None:
    """Sample 4 images of each of up to 10 classes with the current weights; rank 0 writes a PNG.

    Every rank must call this under ZeRO-3 (the forward passes gather partitioned parameters); all ranks
    sample the same seeds, and only rank 0 decodes and writes.

    Args:
        pipe: `sample_grid_pipeline(...)` of this worker.
        step: the optimizer step (names the file).
        outputs: the run's outputs on rank 0, None elsewhere.
    """
    from pipeline.images import encode_png, image_grid

    per_class = 4
    class_ids = torch.arange(min(pipe.num_classes, 10)).repeat_interleave(per_class)
    module = pipe.transformer
    was_training = module.training
    module.eval()
    try:
        tokens = pipe.sample_tokens(
            class_ids, seeds=range(len(class_ids)), sampling=pipe.sampling_defaults
        ).tokens  # (B, h, w)
    finally:
        module.train(was_training)
    if outputs is None:
        return
    grid = image_grid(pipe.decode(tokens), columns=per_class)  # a row per class
    outputs.picture_path(f"step-{step:08d}.png").write_bytes(encode_png(grid))
