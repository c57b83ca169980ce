#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Fixtures start the servers the tests need
# (a SeaweedFS S3 server and Ray clusters on 127.0.0.1) and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
exec python -m pytest "$@"
