#!/usr/bin/env bash
# The README's main job: set up .venv and run `xai compare` on the offline default.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/xai compare "$@"
