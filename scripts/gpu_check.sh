#!/usr/bin/env bash
# The GPU path in one script: set up, run the tests marked `gpu`, run the CUDA benchmark, and write
# benchmarks/results/gpu.json (also copied to $OUT when that is set).
#
#   scripts/gpu_check.sh             on a machine with a CUDA GPU; without one it is a dry run that
#                                    runs the same steps, which skip with their reason, and exits 0
#   scripts/gpu_check.sh --prepare   on a networked machine: fetch into .whl/ the wheels an offline GPU
#                                    machine lacks (Python 3.12, manylinux x86-64), to carry with the tree
#
# Which Python: $PYTHON if set; else .venv's when its torch sees a GPU; else a system python3 whose
# torch sees a GPU (an offline GPU image), with carried wheels from .whl/ installed under /tmp/site;
# else, with network, scripts/setup.sh (torch==2.13.0 from PyPI is the CUDA build there). Ray-scheduled
# tests skip where Ray is not installed (its wheel is too large to carry to an offline machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0

# Small pure-Python needs missing from a bare GPU image; deepspeed has no wheel on PyPI, so it is built.
CARRIED="pytest-timeout==2.3.1 hjson==3.1.0 py-cpuinfo==9.0.0 zarr==3.1.3 donfig==0.8.1.post1 s3fs aiobotocore"

# The Python of the offline GPU image (3.12 on the lent machines). Our packages run there from the tree
# (PYTHONPATH), not installed, so the project's own pin (3.11, for scripts/setup.sh) does not apply; the
# carried wheels must match that interpreter, which the install step checks.
GPU_PYTHON="${GPU_PYTHON:-3.12}"

if [ "${1:-}" = "--prepare" ]; then
  rm -rf .whl && mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl $CARRIED
  python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
  echo "$GPU_PYTHON" >.whl/PYTHON_VERSION
  du -sh .whl
  echo "carry .whl and .cache/datasets (Fashion-MNIST) with the tree, then run scripts/gpu_check.sh there"
  exit 0
fi

sees_gpu() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

PY="${PYTHON:-}"
if [ -z "$PY" ] && [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then
  PY=.venv/bin/python
elif [ -z "$PY" ] && command -v python3 >/dev/null && sees_gpu python3; then
  PY=python3
  if [ -d .whl ]; then
    have="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    want="$(cat .whl/PYTHON_VERSION 2>/dev/null || echo "$GPU_PYTHON")"
    if [ "$have" != "$want" ]; then
      echo "gpu_check: .whl/ holds wheels for Python $want but python3 here is $have;" \
        "rerun 'GPU_PYTHON=$have scripts/gpu_check.sh --prepare' where pip works" >&2
      exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
  fi
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # our packages, without an install step
elif [ -z "$PY" ]; then
  scripts/setup.sh >/dev/null
  PY=.venv/bin/python
fi

if sees_gpu "$PY"; then
  "$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
else
  echo "gpu_check: no CUDA GPU visible to $PY: dry run (the gpu tests and the CUDA benchmark skip)"
fi

log="${OUT:-${TMPDIR:-/tmp}}/gpu_tests.log"
set +e
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rs 2>&1 | tee "$log"
tests_status=${PIPESTATUS[0]}
"$PY" -m benchmarks.bench_gpu "$@"
bench_status=$?
set -e
if [ -n "${OUT:-}" ] && [ -f benchmarks/results/gpu.json ]; then
  cp benchmarks/results/gpu.json "$OUT/"
fi
echo "gpu_check: tests exit $tests_status, benchmark exit $bench_status"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
