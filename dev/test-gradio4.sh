#!/usr/bin/env bash
# Run the UI tests (tab, browser, HTTP routes, handlers) on gradio 4, as Forge ships it, in .venv-gradio4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-gradio4/bin/python ] || "$PY" -m venv .venv-gradio4
.venv-gradio4/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv-gradio4/bin/python -m pip install -q torch==2.13.0
.venv-gradio4/bin/python -m pip install -q -r dev/requirements-gradio4.txt
.venv-gradio4/bin/python -m pip install -q --no-deps -e .
.venv-gradio4/bin/python -m pytest -q tests/test_ui_*.py tests/test_http_api.py
