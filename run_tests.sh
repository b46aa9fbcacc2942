#!/usr/bin/env bash
# Install what the tests need into .venv (same venv as ./webui.sh), then run the whole suite.
#   ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
REQS_FILE=requirements-test.txt ./webui.sh --exit
if [ -x .ci/install-browser.sh ]; then
    .ci/install-browser.sh || echo "no browser: the browser tests will be skipped"
fi
exec .venv/bin/python -m pytest -q -p no:warnings "$@"
