#!/usr/bin/env bash
# Set up (idempotent) and run the whole pipeline end to end on Fashion-MNIST with one command.
# Extra arguments go to `maskgit quickstart` (e.g. --s3, --serve, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec maskgit quickstart "$@"
