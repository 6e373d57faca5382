#!/usr/bin/env bash
# The README's test command (and CI's): install clipsift with test extras and Chromium,
# lint, then run EVERY test, slow and browser ones included (~5 min on 2 cores).
# Usage: bash scripts/test.sh [pytest args]
#   bash scripts/test.sh -m 'not slow'      quick run: skip the slow tests (~3 min)
#   bash scripts/test.sh tests/index        one area (a later -m overrides the default)
# A missing Chromium FAILS the browser tests here (CLIPSIFT_REQUIRE_BROWSER=1); plain
# `pytest` skips them instead and deselects the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null \
      || echo "error: could not install chromium + chromium-driver with apt-get;" \
              "the browser tests will fail" >&2
  else
    echo "error: chromium + chromium-driver are missing and cannot be installed here" \
         "(needs root and apt-get); the browser tests will fail" >&2
  fi
fi
bash scripts/setup.sh ".[test]"
.venv/bin/ruff check clipsift tests scripts bench
export CLIPSIFT_REQUIRE_BROWSER=1
.venv/bin/python -m pytest -q -m 'slow or not slow' "$@"
