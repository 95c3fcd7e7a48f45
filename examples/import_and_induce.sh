#!/usr/bin/env bash
# Import real per-labeler preference data, then induce a persona for one of the labelers.
#
#   PERSONA_REDIS_URL=redis://127.0.0.1:6379/0 bash examples/import_and_induce.sh
#
# The import is idempotent: running this twice adds nothing the second time.
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONA="${PERSONA:-.venv/bin/persona}"
DATA="${DATA:-../shared/data}"
TENANT="${TENANT:-default}"

# --- import ---------------------------------------------------------------------------------------
# Progress goes to stderr; the JSON summary (counts, bad lines with line numbers) to stdout.
"$PERSONA" import "$DATA/tldr_feedback.jsonl.gz" --format native --tenant "$TENANT" | tee /tmp/persona-import-tldr.json
"$PERSONA" import "$DATA/ukp_convarg_dev.jsonl.gz" --format personalrewardbench --tenant "$TENANT" \
  | tee /tmp/persona-import-ukp.json

# --- induce ---------------------------------------------------------------------------------------
USER_ID="${USER_ID:-$(zcat "$DATA/tldr_feedback.jsonl.gz" | head -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["user_id"])')}"
echo "inducing a persona for $USER_ID" >&2
"$PERSONA" induce "$USER_ID" --tenant "$TENANT"
