#!/usr/bin/env bash
# Run the UI tests (tab, HTTP routes, handlers) on gradio 4, as Forge ships it, in .venv-gradio4.
# The browser test runs on gradio 4 only with LJL_GRADIO4_BROWSER=1: on this 2-core machine gradio 4.40's page
# sometimes stops getting its events' results (a run in four or more; never on the WebUI's gradio 3.41, where
# CI runs the browser test), which would make CI fail at random.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gradio4 REQUIREMENTS=dev/requirements-gradio4.txt bash dev/setup.sh
tests=$(ls tests/test_ui_*.py tests/test_http_api.py)
# (pytest's --ignore does not apply to files named on the command line: leave the file out of the list)
[ "${LJL_GRADIO4_BROWSER:-0}" = 1 ] || tests=$(echo "$tests" | grep -v '/test_ui_browser\.py$')
.venv-gradio4/bin/python -m pytest -q $tests
