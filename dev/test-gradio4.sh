#!/usr/bin/env bash
# Run the UI tests (tab, browser, HTTP routes, handlers) on gradio 4, as Forge ships it, in .venv-gradio4.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gradio4 REQUIREMENTS=dev/requirements-gradio4.txt bash dev/setup.sh
.venv-gradio4/bin/python -m pytest -q tests/test_ui_*.py tests/test_http_api.py
