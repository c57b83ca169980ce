#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment with the project and its dev tools,
# and the package-shipped datasets the quickstart and the tests use (nothing is downloaded at run time).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# Reinstall only when the dependency list changed. torch is pinned exactly in pyproject.toml, so a
# CPU machine keeps its CPU wheel and a GPU machine gets PyPI's CUDA build of the same release.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip install --upgrade pip >/dev/null
  pip install -e '.[dev]'
  touch "$stamp"
fi

# Debian's Chromium for tests/test_serve_page.py (playwright drives it; no browser is downloaded).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "setup: could not install chromium; tests/test_serve_page.py will be skipped" >&2
  else
    echo "setup: no chromium (apt-get install chromium, as root); tests/test_serve_page.py will be skipped" >&2
  fi
fi

scripts/fetch_datasets.sh
