"""Training metrics on rank 0: a JSONL log, TensorBoard scalars, and a loss-curve PNG at the end.

The JSONL log is the source of truth (one object per logged step); after a resume the re-run steps are
appended again, and `read_metrics` keeps the last record of each step, so curves show one value per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Append-only metrics for one run; only rank 0 should create one.

    Args:
        out_dir: local directory; writes `metrics.jsonl` and `tensorboard/`.
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._writer.add_scalar(key, float(value), global_step=step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl, one per step (the last one written wins), sorted by step."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def plot_loss_curve(records: list[dict], png_path: str | Path, keys: tuple[str, ...] = ("loss",)) -> Path:
    """Write a PNG of the given metrics against the step (and masked-token accuracy when logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_accuracy = any("masked_accuracy" in r for r in records)
    figure, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 6, 4))
    axes = axes if has_accuracy else [axes]
    steps = [r["step"] for r in records]
    values = []
    for key in keys:
        series = [r.get(key, float("nan")) for r in records]
        values += [v for v in series if v == v]
        axes[0].plot(steps, series, label=key)
    # A cross-entropy starts near ln(K) and falls by an order of magnitude: on a linear axis the first
    # logged values flatten the rest of training into a line, on a log axis progress stays visible.
    if values and min(values) > 0:
        from matplotlib.ticker import FormatStrFormatter

        axes[0].set_yscale("log")
        for axis_formatter in (axes[0].yaxis.set_major_formatter, axes[0].yaxis.set_minor_formatter):
            axis_formatter(FormatStrFormatter("%g"))  # 2, 3, 10 rather than 2x10^0
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (log scale)" if values and min(values) > 0 else "loss")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    if has_accuracy:
        axes[1].plot(steps, [r.get("masked_accuracy", float("nan")) for r in records], color="tab:green")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("masked-token accuracy")
        axes[1].grid(alpha=0.3)
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


def step_time_breakdown(records: list[dict]) -> dict[str, float]:
    """Mean seconds per step of each logged phase (`seconds_<phase>` keys, see jobs.train.worker.PHASES)
    over the logged windows, largest first; empty when the run logged none."""
    phases = sorted({key for record in records for key in record if key.startswith("seconds_")})
    means = {}
    for key in phases:
        values = [record[key] for record in records if key in record]
        means[key.removeprefix("seconds_")] = sum(values) / len(values)
    return dict(sorted(means.items(), key=lambda item: -item[1]))


def describe_step_time(breakdown: dict[str, float]) -> str:
    """'a step: 212 ms = forward 41 %, backward 38 %, ...' (phases under 1 % left out)."""
    total = sum(breakdown.values())
    if total <= 0:
        return "a step: no timing logged"
    shown = [(name, seconds / total) for name, seconds in breakdown.items() if seconds / total >= 0.01]
    shares = ", ".join(f"{name} {100 * share:.0f} %" for name, share in shown)
    return f"a step: {1000 * total:.0f} ms = {shares}"

