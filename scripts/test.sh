#!/usr/bin/env bash
# Bootstrap (with test extras) and run the test suite: bash scripts/test.sh [pytest args] (default -q)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh --test
export LITELLM_LOCAL_MODEL_COST_MAP=True
# screenshots and other files the tests keep for inspection
mkdir -p test-artifacts
export PERSONA_TEST_ARTIFACTS="${PERSONA_TEST_ARTIFACTS:-$PWD/test-artifacts}"
if [[ $# -eq 0 ]]; then
  # three test processes (pytest-xdist): most tests wait on servers they started, so three keep two
  # cores busy; with arguments, pytest runs as they say (add `-n 3` to spread them too)
  set -- -q -n 3
fi
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
  echo "test.sh: no tests were collected; treating that as a failure" >&2
  exit 1
fi
exit $rc
