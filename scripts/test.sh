#!/usr/bin/env bash
# Quick start, command 2: set everything up, then run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast part only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
