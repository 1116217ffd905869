#!/usr/bin/env bash
# Quick start, command 1: set everything up, then run the main job (Deep Compression of
# LeNet-300-100 on Fashion-MNIST). Writes runs/deep-compression-lenet300/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nncompress run "$@"
