#!/usr/bin/env bash
# Fetch the real datasets that registry packages ship (see docs/architecture.md#platform-notes):
# Fashion-MNIST from Debian's dataset-fashion-mnist, unpacked under .cache/datasets (no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/datasets
fm=/usr/share/datasets/fashion-mnist
if [ -f "$fm/train-images-idx3-ubyte.gz" ] || [ -f "$dest/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
mkdir -p "$dest"
(
  cd "$dest"
  if ! apt-get download dataset-fashion-mnist 2>/dev/null; then
    # A machine whose package lists were never fetched: refresh them (needs root) and retry.
    apt-get update -qq && apt-get download dataset-fashion-mnist
  fi
  dpkg-deb -x dataset-fashion-mnist_*.deb .
  rm -f dataset-fashion-mnist_*.deb
)
echo "Fashion-MNIST unpacked under $dest/usr/share/datasets/fashion-mnist"
