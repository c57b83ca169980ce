"""Run every benchmark script and collect the results into one JSON file and one markdown page.

    python -m benchmarks.run_all [--quick] [--only tokenizer sampler ...]

Each `benchmarks/bench_<name>.py` runs in its own process (so one's threads, Ray cluster or memory
peak cannot disturb another's numbers), writes `benchmarks/results/<name>.json`, and this script
merges them into `benchmarks/results.json`; `benchmarks.report` then renders RESULTS.md and the README's
benchmark lines from them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.common import RESULTS_DIR, machine_description

HERE = Path(__file__).resolve().parent
ORDER = ("tokenizer", "sampler", "tokenize_job", "loader", "train", "serve")


def discover() -> list[str]:
    """Benchmark names in pipeline order, then any others found."""
    found = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (default: all)")
    args = parser.parse_args(argv)
    names = args.only or discover()
    status = {}
    for name in names:
        command = [sys.executable, "-m", f"benchmarks.bench_{name}", *(["--quick"] if args.quick else [])]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        status[name] = {"exit_code": code, "seconds": round(time.perf_counter() - start, 1)}

    results = {}
    for path in sorted(RESULTS_DIR.glob("*.json")):
        results[path.stem] = json.loads(path.read_text())
    merged = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_description(),
        "quick": args.quick,
        "runs": status,
        "results": results,
    }
    (HERE / "results.json").write_text(json.dumps(merged, indent=1))
    report.main([])  # RESULTS.md and the README's benchmark lines, rendered from the results
    failed = [n for n, s in status.items() if s["exit_code"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
