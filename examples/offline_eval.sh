#!/usr/bin/env bash
# Does personalization help on real per-user data? The offline protocol (time-ordered hold-out of each
# user's latest 30%, both orders, ties wrong, bootstrap CI, per-user gain over the global scorer).
#
#   bash examples/offline_eval.sh                 # lora vs global on TL;DR (CPU, a few minutes)
#   SCORER=judge MODEL=gpt-4o-mini bash examples/offline_eval.sh   # needs an LLM (PERSONA_UPSTREAM_*)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data/tldr_feedback.jsonl.gz}"
SCORER="${SCORER:-lora}"
OUT="${OUT:-var/eval}"
mkdir -p "$OUT"
name="$(basename "$DATA" .jsonl.gz)_$SCORER"
args=(--data "$DATA" --scorer "$SCORER" --out "$OUT/$name.json" --plot "$OUT/$name.png")
if [[ -n "${USERS:-}" ]]; then args+=(--users "$USERS"); fi
if [[ -n "${MODEL:-}" ]]; then args+=(--model "$MODEL"); fi
HF_HUB_OFFLINE=1 .venv/bin/persona eval "${args[@]}"
echo "report: $OUT/$name.json, plot: $OUT/$name.png"
