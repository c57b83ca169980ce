"""Shared plumbing for benchmark scripts: machine description, markdown tables, JSON results.

Every script in benchmarks/ measures one claim, prints a markdown table, and writes
benchmarks/results/<name>.json through `write_result`, which `benchmarks/run_all.py` collects.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_description() -> dict:
    """CPU model, core count, memory and accelerator of this machine (what a number was measured on)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "bf16_kernels": bf16_kernels_available("cuda" if gpu else "cpu"),
        "python": platform.python_version(),
    }


def cpu_flags() -> str:
    """The CPU extensions bf16 speed depends on (from /proc/cpuinfo), e.g. 'avx2 avx512_bf16 amx_bf16'."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next(line for line in handle if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.machine()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")
    return " ".join(flag for flag in wanted if flag in flags) or "none of avx2/avx512/amx"


def cpu_model() -> str:
    """`lscpu`'s model name with its family and model numbers (which CPU generation this is)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()
    fields = {
        key.strip(): value.strip()
        for key, value in (line.split(":", 1) for line in out.splitlines() if ":" in line)
    }
    return (
        f"{fields.get('Model name', '?')} (family {fields.get('CPU family', '?')} model "
        f"{fields.get('Model', '?')}, {fields.get('CPU(s)', '?')} CPUs)"
    )


def bf16_kernels_available(device_type: str = "cpu") -> bool:
    """Whether bf16 convolutions and matmuls have fast kernels (oneDNN bf16 on CPU; any CUDA GPU).

    Without them (AVX2-only CPUs) torch runs bf16 through scalar fallback loops tens of times slower
    than fp32, so a bf16 benchmark there measures the fallback, not the model.
    """
    import torch

    if device_type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts -> a markdown table (floats with 3 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def autocast_for(precision: str, device_type: str = "cpu"):
    """bf16 autocast on `device_type` when `precision` is "bf16"; a disabled autocast (plain fp32) else."""
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def sync(device) -> None:
    """Wait for the device's queued work, so a timer around a call measures it (a no-op off CUDA)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def code_commit() -> str:
    """The commit of the code being measured, with "+dirty" when tracked files differ from it ("" off git).

    `benchmarks.report` marks a goal met only on a record that names the code it measured.
    """
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return ""
        dirty = git("diff", "--quiet", "HEAD", "--", ".", ":!benchmarks/results", ":!README.md").returncode
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


def write_result(
    name: str,
    rows: list[dict],
    *,
    notes: str = "",
    columns: list[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """Print the table and write benchmarks/results/<name>.json (with `extra`: values beside the table
    that `benchmarks.report` renders); returns the result record."""
    record = {
        "name": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": code_commit(),
        "machine": machine_description(),
        "columns": columns or (list(rows[0]) if rows else []),
        "rows": rows,
        "notes": notes,
        **({"extra": extra} if extra else {}),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2))
    print(f"\n## {name}\n")
    print(markdown_table(rows, record["columns"]))
    if notes:
        print(f"\n{notes}")
    return record
