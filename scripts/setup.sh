#!/usr/bin/env bash
# Create or reuse .venv in the repo root and install xai (editable) with the given extras.
# The install is skipped when .venv already holds it for this pyproject.toml and these extras
# (a stamp file): the package is editable, so code changes need no reinstall, and pip's own
# "already satisfied" pass took 9 s of every run of the main job on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.xai-installed${extras:+-$extras}"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $(.venv/bin/python -V 2>&1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/xai ] \
    && (root="$PWD" && cd / && "$root/.venv/bin/python" -c "import xai" 2>/dev/null); then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
echo "$want" > "$stamp"
