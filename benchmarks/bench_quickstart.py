"""Benchmark: the default `maskgit quickstart` from scratch: time per stage, and the results it reports.

Runs `maskgit quickstart --out <an empty temp dir> [extra flags]` in a child process, as a user's first
run after set-up, and reads the `summary.json` it writes. Writes `benchmarks/results/quickstart.json`:
a row per stage (seconds, as the quickstart timed it), the command's whole wall time and, under
`extra`, what the README quotes (class accuracy of the samples, FID-EffLite0, the tokenizer's PSNR,
the ablation table). `benchmarks.report` renders the README's quickstart section from that file, and
the quickstart scales its time estimate by its stage times.

    python -m benchmarks.bench_quickstart                 # the default run (minutes; an idle machine)
    python -m benchmarks.bench_quickstart -- --train-steps 1500   # flags after -- go to the quickstart
    python -m benchmarks.bench_quickstart --quick         # a reduced run, to quickstart_quick.json

The machine's load average before and after goes into the notes: a number from a loaded machine says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from jobs.quickstart.command import STAGES

QUICK_FLAGS = [
    "--train-per-class", "40", "--heldout-per-class", "10", "--classifier-epochs", "1",
    "--vqgan-steps", "40", "--transformer-depth", "2", "--train-steps", "20", "--global-batch-size", "32",
    "--samples-per-class", "2", "--eval-per-class", "4", "--ablation-per-class", "2",
]  # fmt: skip
CLASS_ACCURACY_KEY = "classifier accuracy (samples show their class)"


def summary_numbers(summary: dict) -> dict:
    """The README's numbers from a quickstart `summary.json`."""
    evaluate = summary["evaluate"]
    return {
        "class_accuracy": float(evaluate[CLASS_ACCURACY_KEY]),
        "metrics": evaluate["metrics"],  # label -> value, e.g. "FID-EffLite0 (...)": 70.6
        "classifier_test_accuracy": summary["classifier"]["test_accuracy"],
        "tokenizer_psnr": summary["tokenizer"]["psnr"],
        "tokenizer_codebook_used": summary["tokenizer"]["codebook_used"],
        "tokenize_images": summary["tokenize"]["images"],
        "tokenize_images_per_s": summary["tokenize"]["images_per_s"],
        "ablation": summary["ablation"]["rows"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes; writes quickstart_quick.json")
    parser.add_argument("flags", nargs="*", help="quickstart flags (after --)")
    args = parser.parse_args(argv)
    flags = [*(QUICK_FLAGS if args.quick else []), *args.flags]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as scratch:
        out = Path(scratch) / "quickstart_out"
        command = [sys.executable, "-m", "jobs.cli", "quickstart", "--out", str(out), *flags]
        print(" ".join(command[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
        step_time = out / "run" / "step_time.json"  # where a training step's time went (rank 0)
        train_step = json.loads(step_time.read_text()) if step_time.is_file() else {}
    rows = [{"stage": name, "seconds": summary[name]["seconds"]} for name in STAGES]
    extra = {"wall_s": round(wall, 1), "flags": flags, "train_step_seconds": train_step}
    extra.update(summary_numbers(summary))
    notes = (
        f"`{' '.join(['maskgit quickstart', *flags])}` from an empty output folder (set-up excluded); wall "
        f"{wall:.0f} s including start-up. Load average (1 min) before {load_before:.1f}, after "
        f"{os.getloadavg()[0]:.1f}."
    )
    return write_result("quickstart_quick" if args.quick else "quickstart", rows, notes=notes, extra=extra)


if __name__ == "__main__":
    main()
