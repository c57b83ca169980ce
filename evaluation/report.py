"""Evaluation reports: one JSON and one markdown file that name the evaluator next to every number.

Users of MaskGIT-family models most often cannot reproduce published FIDs because evaluators
differ (docs/architecture.md#design-notes). So a report states, beside each number: the evaluator
and whether it is comparable with published FID (the EfficientNet-Lite0 one is labelled
"FID-EffLite0 (not comparable with published FID)"), the preprocessing (including the reference's
min-max stretch), the reference statistics it was measured against, the number of samples, and the
sampling settings (steps, schedule, temperatures, CFG) that produced the samples.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """All numbers of one evaluation and everything needed to interpret them.

    Attributes:
        fid: Fréchet distance against the reference statistics.
        inception_score: mean over splits.
        inception_score_std: standard deviation over splits.
        precision, recall, density, coverage: k-NN manifold metrics (Naeem et al. 2020).
        num_samples: generated images measured.
        evaluator: the evaluator's `EvaluatorInfo.to_dict()` (name, labels, preprocessing).
        reference: description of the reference statistics (path, count, source, evaluator).
        sampling: sampling settings that produced the samples (steps, schedule, temperatures, CFG...).
        model: what was sampled (checkpoint paths, configs), free-form.
        protocol: IS splits, PR k and splits, samples per class, seed.
        extra: anything else worth recording (e.g. classifier accuracy on the samples).
    """

    fid: float
    inception_score: float
    inception_score_std: float
    precision: float
    recall: float
    density: float
    coverage: float
    num_samples: int
    evaluator: dict
    reference: dict
    sampling: dict
    model: dict = dataclasses.field(default_factory=dict)
    protocol: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def labelled_metrics(self) -> dict[str, float]:
        """The headline numbers keyed by the evaluator-specific labels a reader sees."""
        return {
            self.evaluator["fid_label"]: self.fid,
            self.evaluator["is_label"]: self.inception_score,
            "precision": self.precision,
            "recall": self.recall,
            "density": self.density,
            "coverage": self.coverage,
        }

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["labelled_metrics"] = self.labelled_metrics()
        record["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return record


@dataclasses.dataclass(frozen=True)
class WrittenReport:
    """Where a report went."""

    json_path: str
    markdown_path: str


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items()) or "(not recorded)"


def render_markdown(result: EvaluationResult) -> str:
    """The markdown report: a metrics table where each row names evaluator and sampling settings."""
    evaluator = result.evaluator
    settings = _settings_text(result.sampling)
    comparable = (
        "yes (TF-FID InceptionV3)"
        if evaluator.get("comparable_with_published")
        else "**no**: a different feature network than published FID/IS"
    )
    rows = [
        (evaluator["fid_label"], f"{result.fid:.3f}"),
        (evaluator["is_label"], f"{result.inception_score:.3f} ± {result.inception_score_std:.3f}"),
        ("Precision (k-NN)", f"{result.precision:.4f}"),
        ("Recall (k-NN)", f"{result.recall:.4f}"),
        ("Density (k-NN)", f"{result.density:.4f}"),
        ("Coverage (k-NN)", f"{result.coverage:.4f}"),
    ]
    lines = [
        "# MaskGIT evaluation report",
        "",
        f"- Evaluator: `{evaluator['name']}`: {evaluator['network']}",
        f"- Comparable with published FID/IS: {comparable}",
        f"- Preprocessing: {_settings_text(evaluator.get('preprocessing', {}))}",
        f"- Samples: {result.num_samples}",
        f"- Reference statistics: {_settings_text(result.reference)}",
        f"- Protocol: {_settings_text(result.protocol)}",
        f"- Model: {_settings_text(result.model)}",
        "",
        "| metric | value | evaluator | sampling settings |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {value} | `{evaluator['name']}` | {settings} |" for name, value in rows]
    for key, value in result.extra.items():
        lines.append(f"| {key} | {value} | | {settings} |")
    lines += ["", f"Sampling settings: {settings}", ""]
    return "\n".join(lines)


def write_report(
    result: EvaluationResult, directory, *, filesystem=None, stem: str = "report"
) -> WrittenReport:
    """Write `<directory>/<stem>.json` and `<directory>/<stem>.md`.

    Args:
        result: the numbers and their context.
        directory: a local folder, or a path inside `filesystem`.
        filesystem: an fsspec filesystem (None: local disk).
        stem: file name without extension.
    """
    json_text = json.dumps(result.to_dict(), indent=2, default=str)
    markdown = render_markdown(result)
    directory = str(directory).rstrip("/")
    json_path, markdown_path = f"{directory}/{stem}.json", f"{directory}/{stem}.md"
    if filesystem is None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json_text)
        Path(markdown_path).write_text(markdown)
    else:
        filesystem.makedirs(directory, exist_ok=True)
        filesystem.pipe(json_path, json_text.encode())
        filesystem.pipe(markdown_path, markdown.encode())
    return WrittenReport(json_path, markdown_path)
