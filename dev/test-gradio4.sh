#!/usr/bin/env bash
# Run the UI tests (tab, browser, HTTP routes, handlers) on gradio 4, as Forge ships it, in .venv-gradio4.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gradio4 REQUIREMENTS=dev/requirements-gradio4.txt bash dev/setup.sh
.venv-gradio4/bin/python -m pytest -q tests/test_ui_*.py tests/test_http_api.py --ignore=tests/test_ui_browser.py
# On a loaded 2-core machine gradio 4.40's page sometimes stops getting its events' results (about one run
# in four here, before and after the changes of 2026-11-24; never on gradio 3.41): a failed browser run is
# run once more, on a fresh server, and a second failure fails.
.venv-gradio4/bin/python -m pytest -q tests/test_ui_browser.py || {
  echo "note: the gradio 4 browser test failed; running it once more on a fresh server" >&2
  .venv-gradio4/bin/python -m pytest -q tests/test_ui_browser.py
}
