#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install what it needs.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run repeatedly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BATCHSCALE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
# Torch first: with no torch present, a plain requirement would pull the CUDA
# build. A user who already has any torch in the supported range keeps it.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "$VENV/bin/pip" install -q "torch==2.13.0"
fi
stamp="$VENV/.batchscale-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/scripts/env.sh" -nt "$stamp" ]; then
    "$VENV/bin/pip" install -q -e "$ROOT[test,ray]"
    # Test-only oracle for the K-FAC factors. --no-deps so that it can never
    # replace the installed torch; its own small dependencies come explicitly.
    "$VENV/bin/pip" install -q --no-deps "curvlinops-for-pytorch==3.0.1"
    "$VENV/bin/pip" install -q --no-deps einops einconv linear_operator
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
