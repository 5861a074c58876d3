#!/usr/bin/env bash
# Run the UI tests (tab, HTTP routes, handlers) on gradio 4, as Forge ships it, in .venv-gradio4.
# The browser test runs on gradio 4 only with LJL_GRADIO4_BROWSER=1: on this 2-core machine gradio 4.40's page
# sometimes stops getting its events' results (a run in four or more; never on the WebUI's gradio 3.41, where
# CI runs the browser test), which would make CI fail at random.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gradio4 REQUIREMENTS=dev/requirements-gradio4.txt bash dev/setup.sh
if [ "${LJL_GRADIO4_BROWSER:-0}" = 1 ]; then
  .venv-gradio4/bin/python -m pytest -q tests/test_ui_*.py tests/test_http_api.py
else
  .venv-gradio4/bin/python -m pytest -q tests/test_ui_*.py tests/test_http_api.py --ignore=tests/test_ui_browser.py
fi
