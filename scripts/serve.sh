#!/usr/bin/env bash
# Bootstrap (if needed) and run the proxy: bash scripts/serve.sh [persona serve options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/persona serve "$@"
