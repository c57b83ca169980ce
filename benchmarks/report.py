"""Render the benchmark claims from the committed results: README's benchmark block and RESULTS.md.

    python -m benchmarks.report           # rewrite both from benchmarks/results/*.json
    python -m benchmarks.report --check   # exit 1 when either differs from what would be written

This is the only writer of `benchmarks/RESULTS.md` and of the README lines between the
`benchmarks:begin` / `benchmarks:end` markers; `tests/test_benchmark_report.py` fails when either
differs from its rendering, so a number in them is always one a benchmark wrote.

A claim is one measure computed from one result file's rows, with its goal. Its verdict:
- "met" / "missed": the value against the goal, on a record that names the commit it measured
  (`benchmarks.common.code_commit`; "+dirty" is shown when the tree differed from that commit);
- "unverified": a record written before results named their commit, so which code it measured is not
  known: the value is shown, and the goal stays open until the benchmark is rerun (a miss is shown as
  "missed" either way);
- "not measurable here": the machine could not measure it (e.g. bf16 without bf16 kernels), with why;
- "reported": a measure without a goal.
The explanations (why a goal is missed, what a lever bought) sit in RESULTS.md beside the full tables.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import RESULTS_DIR, markdown_table
from jobs.train.metrics_log import describe_step_time

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- benchmarks:begin (python -m benchmarks.report) -->", "<!-- benchmarks:end -->"
QS_BEGIN, QS_END = "<!-- quickstart:begin (python -m benchmarks.report) -->", "<!-- quickstart:end -->"
V2_BEGIN, V2_END = "<!-- quickstart-v2:begin (python -m benchmarks.report) -->", "<!-- quickstart-v2:end -->"
V2_FILES = ("quickstart_v2_sampler_comparison", "quickstart_v2_ablation")  # lists the quickstart writes
Rows = list[dict]


@dataclass(frozen=True)
class Claim:
    """One measured claim: `value(rows)` of `results/<benchmark>.json`, shown with `unit`, against `goal`."""

    benchmark: str
    measure: str
    value: Callable[[Rows], float | None]
    unit: str = "×"
    goal: tuple[str, float] | None = None  # (">=" | "<=", threshold)
    needs_bf16_kernels: bool = False
    uses_record: bool = False  # `value` takes the whole record (its `extra`), not its rows
    why: str = ""  # what bounds it, in words: numbers belong in the results, not here


def _row(rows: Rows, **match) -> dict:
    """The one row whose fields equal `match` (KeyError naming the match when there is none)."""
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    raise KeyError(f"no row with {match}")


def _loader_speedup(workers: int, ours: str = "ours") -> Callable[[Rows], float]:
    def value(rows: Rows) -> float:
        peers = [
            _row(rows, loader=peer, workers=workers)["cold_samples_per_s"] for peer in ("mosaic", "litdata")
        ]
        return _row(rows, loader=ours, workers=workers)["cold_samples_per_s"] / max(peers)

    return value


def _tokenizer_speedup(operation: str, clock: str) -> Callable[[Rows], float]:
    # "ours-nchw" is the layout the tokenizer ships with (channels-last is opt-in).
    def value(rows: Rows) -> float:
        row = _row(rows, operation=operation, variant="ours-nchw", precision="fp32", size=256)
        return row[f"speedup_{clock}"]

    return value


def _faults_ratio(workload: str) -> Callable[[Rows], float]:
    def value(rows: Rows) -> float:
        return _row(rows, workload=workload, faults="5 % mixed")["vs_0_percent"]

    return value


def _quickstart_fid(record: dict) -> float:
    """The FID-like number of the quickstart's evaluation (its label names the evaluator)."""
    metrics = record["extra"]["metrics"]
    return float(next(value for label, value in metrics.items() if label.startswith("FID")))


def _sampler_bf16_speedup(rows: Rows) -> float:
    ratios = []
    for row in rows:
        if row["precision"] == "bf16":
            fp32 = _row(rows, precision="fp32", batch=row["batch"], cfg=row["cfg"])
            ratios.append(row["images_per_s"] / fp32["images_per_s"])
    return min(ratios)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "quickstart",
        "`maskgit quickstart` from scratch with default flags, wall time (set-up excluded)",
        lambda record: record["extra"]["wall_s"] / 60,
        unit=" min",
        goal=("<=", 12.0),
        uses_record=True,
    ),
    Claim(
        "quickstart",
        "quickstart samples that a classifier trained on real images assigns to their class",
        lambda record: record["extra"]["class_accuracy"],
        unit="",
        goal=(">=", 0.8),
        uses_record=True,
    ),
    Claim(
        "quickstart",
        "quickstart FID-EffLite0 against the held-out images",
        _quickstart_fid,
        unit="",
        goal=("<=", 70.0),
        uses_record=True,
    ),
    Claim(
        "loader",
        "loader first epoch from S3 vs the faster peer (MosaicML Streaming, LitData), no workers",
        _loader_speedup(0),
        goal=(">=", 1.5),
    ),
    Claim(
        "loader",
        "loader first epoch from S3 vs the faster peer, 2 worker processes (fork, as the peers)",
        _loader_speedup(2),
        goal=(">=", 1.5),
    ),
    Claim(
        "sampler_forward",
        "reference 256 px transformer fp32 forward, fraction of the plain-matmul rate",
        lambda rows: _row(rows, precision="fp32")["fraction_of_matmul"],
        unit="",
        goal=(">=", 0.9),
    ),
    Claim(
        "sampler_forward",
        "reference 256 px transformer bf16 forward, fraction of the bf16 matmul rate",
        lambda rows: _row(rows, precision="bf16")["fraction_of_matmul"],
        unit="",
        goal=(">=", 0.6),
        needs_bf16_kernels=True,
    ),
    Claim(
        "sampler",
        "sampler bf16 autocast vs fp32 images/s (slowest batch / CFG setting)",
        _sampler_bf16_speedup,
        goal=(">=", 1.8),
        needs_bf16_kernels=True,
    ),
    Claim(
        "serve",
        "serving one image a request at concurrency 16 vs offline batches",
        lambda rows: _row(rows, concurrency=16)["served_over_offline"],
        goal=(">=", 0.8),
    ),
    Claim(
        "serve_mixed",
        "serving mixed requests, continuous batching vs offline (worse of concurrency 16, 64)",
        lambda rows: min(r["served_over_offline"] for r in rows if r["batching"] == "continuous"),
        goal=(">=", 0.9),
    ),
    Claim(
        "serve_mixed",
        "serving mixed requests, p99 latency over the request alone (worse of concurrency 16, 64)",
        lambda rows: max(r["p99_over_alone"] for r in rows if r["batching"] == "continuous"),
        goal=("<=", 2.0),
        why="On a CPU a forward costs the same per row at any batch size, so Little's law puts the mean "
        "latency at no less than concurrency x images / offline rate whatever the batching (the "
        "`little_bound_s` column): the goal needs hardware whose forward is cheaper per row in a batch.",
    ),
    Claim(
        "tokenize_job",
        "tokenize job vs the bare encoder loop, end to end",
        lambda rows: _row(rows, part="throughput")["ratio"],
        goal=(">=", 0.85),
    ),
    Claim(
        "train",
        "training step, DeepSpeed ZeRO-1 bf16 vs a plain bf16 AdamW loop",
        lambda rows: _row(rows, loop="ours: DeepSpeed ZeRO-1 (bf16)")["vs plain"],
        goal=(">=", 1.0),
    ),
    Claim(
        "train",
        "training, 2 gloo workers, ZeRO-2",
        lambda rows: _row(rows, workers=2, loop="ours: DeepSpeed ZeRO-2 (fp32, gloo)")["tokens/s"],
        unit=" tokens/s",
    ),
    Claim(
        "tokenizer",
        "VQGAN f16-1024 fp32 encode vs the reference computation, wall time",
        _tokenizer_speedup("encode", "wall"),
        goal=(">=", 1.3),
    ),
    Claim(
        "tokenizer",
        "VQGAN f16-1024 fp32 encode vs the reference computation, CPU time",
        _tokenizer_speedup("encode", "cpu"),
        goal=(">=", 1.3),
        why="Convolutions are most of the time and run the same oneDNN kernels as the reference; the levers "
        "(fused attention, one swish kernel) only cut the rest. Channels-last is faster but opt-in: with it "
        "one image decoded alone and in a batch can differ in a pixel.",
    ),
    Claim(
        "tokenizer",
        "VQGAN f16-1024 fp32 decode vs the reference computation, wall time",
        _tokenizer_speedup("decode", "wall"),
        goal=(">=", 1.3),
    ),
    Claim(
        "tokenizer",
        "VQGAN f16-1024 fp32 decode vs the reference computation, CPU time",
        _tokenizer_speedup("decode", "cpu"),
        goal=(">=", 1.3),
    ),
    Claim(
        "tokenizer",
        "VQGAN f16-1024 bf16 vs fp32",
        lambda rows: None,
        goal=(">=", 3.0),
        needs_bf16_kernels=True,
    ),
    Claim(
        "families_training",
        "training step of the quickstart presets, v2 transformer over v1",
        lambda rows: (
            _row(rows, family="v2")["transformer_step_ms"] / _row(rows, family="v1")["transformer_step_ms"]
        ),
    ),
    Claim(
        "evaluation",
        "FID at D = 2048, scipy sqrtm over the eigh route (same value)",
        lambda rows: (
            _row(rows, measure="FID D=2048 (sqrtm)")["value"]
            / _row(rows, measure="FID D=2048 (eigh)")["value"]
        ),
    ),
    Claim(
        "s3_faults",
        "token loader at 5 % mixed S3 faults vs fault-free",
        _faults_ratio("loader"),
        goal=(">=", 0.8),
    ),
    Claim(
        "s3_faults",
        "token store writer at 5 % mixed S3 faults vs fault-free",
        _faults_ratio("writer"),
        goal=(">=", 0.8),
    ),
)


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """Every `write_result` record in `results_dir` by name (lists written by other tools are skipped)."""
    records = {}
    for path in sorted(results_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "rows" in record:
            records[path.stem] = record
    return records


def describe_machine(machine: dict) -> str:
    """'AMD EPYC (family 25 model 1, 2 CPUs), avx2, no bf16 kernels' or the older records' shorter form."""
    if not machine:
        return "machine not recorded"
    parts = [machine.get("cpu_model") or f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"]
    if machine.get("cpu_flags"):
        parts.append(machine["cpu_flags"])
    if "bf16_kernels" in machine:
        parts.append("bf16 kernels" if machine["bf16_kernels"] else "no bf16 kernels")
    if machine.get("gpu"):
        parts.append(machine["gpu"])
    return ", ".join(parts)


def _format(value: float, unit: str) -> str:
    text = f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return f"{text}{unit}"


def verdict(claim: Claim, record: dict | None) -> tuple[str, str]:
    """(value as shown, verdict) of `claim` on `record` (None: the benchmark has no result yet)."""
    if record is None:
        return "—", "not measured yet"
    if claim.needs_bf16_kernels and record["machine"].get("bf16_kernels") is False:
        return "—", "not measurable here: this CPU has no bf16 kernels (torch's fallback is 40–100× slower)"
    value = claim.value(record if claim.uses_record else record["rows"])
    if value is None:
        return "—", "not measurable here"
    shown = _format(value, claim.unit)
    if claim.goal is None:
        return shown, "reported"
    compare = operator.ge if claim.goal[0] == ">=" else operator.le
    reached = compare(value, claim.goal[1])
    if not record.get("commit"):
        return shown, f"{'unverified' if reached else 'missed'} (no commit named: rerun)"
    return shown, "**met**" if reached else "**missed**"


def render_readme_block(records: dict[str, dict]) -> str:
    """The README's benchmark lines, one per claim, between the markers."""
    lines = [BEGIN, "| measure | value | goal | verdict | measured |", "|---|---|---|---|---|"]
    for claim in CLAIMS:
        record = records.get(claim.benchmark)
        shown, word = verdict(claim, record)
        goal = ""
        if claim.goal:
            goal = f"{'≥' if claim.goal[0] == '>=' else '≤'} {_format(claim.goal[1], claim.unit)}"
        when = "" if record is None else f"{record['date'][:10]}, {describe_machine(record['machine'])}"
        if record and record.get("commit"):
            when += f", {record['commit']}"
        lines.append(f"| {claim.measure} (`{claim.benchmark}`) | {shown} | {goal} | {word} | {when} |")
    return "\n".join([*lines, END])


def render_results_md(records: dict[str, dict]) -> str:
    """RESULTS.md: the claims with their explanations, then each benchmark's full table, its record's
    date, machine and commit, and its notes."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit by hand.",
        "",
        "## Claims",
        "",
        render_readme_block(records).split("\n", 1)[1].rsplit("\n", 1)[0],
    ]
    explained = [claim for claim in CLAIMS if claim.why]
    if explained:
        lines += ["", "Why:", ""] + [f"- {claim.measure}: {claim.why}" for claim in explained]
    for name, record in records.items():
        commit = record.get("commit") or "not recorded"
        lines += [
            "",
            f"## {name}",
            "",
            f"Measured {record['date']} on {describe_machine(record['machine'])}; code at commit {commit}.",
            "",
            markdown_table(record["rows"], record["columns"]),
        ]
        if record.get("notes"):
            lines += ["", record["notes"]]
    return "\n".join(lines) + "\n"


def render_quickstart_block(record: dict | None) -> str:
    """The README's quickstart numbers: stage times, results and ablation of the measured default run."""
    if record is None:
        return "\n".join([QS_BEGIN, "No measured run yet: `python -m benchmarks.bench_quickstart`.", QS_END])
    extra = record["extra"]
    commit = f", code at {record['commit']}" if record.get("commit") else ""
    stage_rows = [{"stage": row["stage"], "seconds": round(row["seconds"])} for row in record["rows"]]
    result_rows = [
        {"what": "samples showing their class (a classifier trained on real images; real test images: "
         f"{extra['classifier_test_accuracy']:.0%})", "value": f"{extra['class_accuracy']:.3f}"},
        *({"what": label, "value": f"{value:.3g}"} for label, value in extra["metrics"].items()),
        {"what": "tokenizer reconstruction PSNR (dB) / codebook used",
         "value": f"{extra['tokenizer_psnr']:.1f} / {extra['tokenizer_codebook_used']:.0%}"},
        {"what": f"tokenize job ({extra['tokenize_images']:,} images, both views)",
         "value": f"{extra['tokenize_images_per_s']:.0f} images/s"},
    ]  # fmt: skip
    ablation = [
        {"setting": row["name"], "class accuracy": f"{row['class_accuracy']:.3f}", "FID": f"{row['fid']:.1f}",
         "diversity": f"{row['diversity']:.2f}"}
        for row in extra["ablation"]
    ]  # fmt: skip
    flags = " ".join(extra.get("flags") or []) or "default flags"
    step = extra.get("train_step_seconds") or {}
    step_line = ""
    if step:  # where a training step's time went on rank 0 (jobs.train.worker.PHASES)
        step_line = f"Training, rank 0: {describe_step_time(step)} (backward includes gloo's all-reduce)."
    return "\n".join([
        QS_BEGIN,
        f"Measured by `python -m benchmarks.bench_quickstart` ({flags}) on {record['date'][:10]}, "
        f"{describe_machine(record['machine'])}{commit}: **{extra['wall_s'] / 60:.1f} min** end to end. "
        f"{record.get('notes', '')}",
        "",
        markdown_table(stage_rows),
        *(["", step_line] if step_line else []),
        "",
        markdown_table(result_rows),
        "",
        "The ablation (`ablation.md`, the same seeds in every row):",
        "",
        markdown_table(ablation),
        QS_END,
    ])  # fmt: skip


def render_v2_block(results_dir: Path = RESULTS_DIR) -> str:
    """The v2 quickstart's sampler comparison and ablation tables, from the row lists it wrote."""
    lines = [V2_BEGIN]
    for name in V2_FILES:
        path = results_dir / f"{name}.json"
        if not path.is_file():
            lines += [f"(no `{name}.json` yet)", ""]
            continue
        rows = [
            {
                "setting": row["name"],
                "class accuracy": f"{row['class_accuracy']:.3f}",
                "FID-EffLite0": f"{row['fid']:.1f}",
                "diversity": f"{row['diversity']:.2f}",
                "images/s": f"{row['images_per_s']:.1f}",
                "forward passes / image": f"{row['forwards_per_image']:.0f}",
            }
            for row in json.loads(path.read_text())
        ]
        lines += [f"`benchmarks/results/{name}.json`:", "", markdown_table(rows), ""]
    return "\n".join([*lines[:-1], V2_END])


def readme_with_block(readme: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """`readme` with the text between the markers replaced by `block` (ValueError: a marker is missing)."""
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"README.md lacks the markers {begin!r} ... {end!r}")
    return readme[:start] + block + readme[stop + len(end) :]


def render_readme(readme: str, records: dict[str, dict]) -> str:
    """`readme` with both rendered blocks (benchmark claims, quickstart numbers) brought up to date."""
    readme = readme_with_block(readme, render_readme_block(records))
    readme = readme_with_block(readme, render_v2_block(), V2_BEGIN, V2_END)
    return readme_with_block(readme, render_quickstart_block(records.get("quickstart")), QS_BEGIN, QS_END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file would change")
    args = parser.parse_args(argv)
    records = load_results()
    wanted = {
        README: render_readme(README.read_text(), records),
        RESULTS_MD: render_results_md(records),
    }
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from `python -m benchmarks.report`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
