#!/usr/bin/env bash
# The main job: the reference NQM batch-size scaling study, figures into figures/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
# All cores by default (records are identical); a later --workers N overrides it.
exec python -m analysis nqm-scaling --workers 0 "$@"
