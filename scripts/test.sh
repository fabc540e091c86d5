#!/usr/bin/env bash
# The README's test command: set up .venv with the test extra and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
export TF_CPP_MIN_LOG_LEVEL=2
# A private model cache per run: the suite trains the offline default itself.
export XAI_CACHE_DIR="$(mktemp -d)"
trap 'rm -rf "$XAI_CACHE_DIR"' EXIT
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
