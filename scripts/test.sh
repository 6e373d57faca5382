#!/usr/bin/env bash
# Install clipsift with test extras (and Chromium for browser tests), then lint and test.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  fi
fi
bash scripts/setup.sh ".[test]"
.venv/bin/ruff check clipsift tests scripts bench
.venv/bin/python -m pytest -q "$@"
