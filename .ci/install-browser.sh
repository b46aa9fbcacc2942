#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/browser). Playwright drives /usr/bin/chromium and never
# downloads a browser of its own. Installs only when chromium is missing and we are root; otherwise it
# says why and leaves the browser tests to skip themselves.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-browser: /usr/bin/chromium is missing and this is not root; browser tests will be skipped" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; install chromium at /usr/bin/chromium to run the browser tests" >&2
    exit 0
fi
apt-get update && apt-get install -y chromium
