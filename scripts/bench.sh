#!/usr/bin/env bash
# Bootstrap (if needed) and run the benchmarks: bash scripts/bench.sh [args for `python -m benchmarks`]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/python -m benchmarks "$@"
