#!/usr/bin/env bash
# Supply-chain checks of a virtualenv, made without starting any of its interpreters (a *.pth file in
# site-packages runs code at every interpreter start, so it must be checked before one starts):
#   1. no litellm release that must never be installed (1.82.7 and 1.82.8 were malicious)
#   2. every *.pth file in site-packages is allow-listed in scripts/allowed_pth.txt
# Usage: bash scripts/check_site_packages.sh [VENV]   (default .venv). Exit status 1 on any finding.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${1:-.venv}"

shopt -s nullglob
site_dirs=("$venv"/lib/python3*/site-packages)
shopt -u nullglob
if [[ ${#site_dirs[@]} -ne 1 ]]; then
  echo "check_site_packages: expected one $venv/lib/python3*/site-packages, found ${#site_dirs[@]}" >&2
  exit 1
fi
site_packages="${site_dirs[0]}"
failed=0

# 1. forbidden litellm releases, read from the installed distribution's metadata folder name
litellm_version=""
for info in "$site_packages"/litellm-*.dist-info; do
  [[ -d "$info" ]] || continue
  litellm_version="${info##*/litellm-}"
  litellm_version="${litellm_version%.dist-info}"
  for bad in 1.82.7 1.82.8; do
    if [[ "$litellm_version" == "$bad" ]]; then
      echo "check_site_packages: FORBIDDEN litellm $bad is installed" >&2
      failed=1
    fi
  done
done

# 2. *.pth files: only the allow-listed ones
mapfile -t allowed < <(grep -Ev '^[[:space:]]*(#|$)' scripts/allowed_pth.txt)
while IFS= read -r -d '' pth; do
  name="$(basename "$pth")"
  ok=0
  for pattern in "${allowed[@]}"; do
    # shellcheck disable=SC2053  # the pattern is a glob on purpose
    if [[ "$name" == $pattern ]]; then
      ok=1
      break
    fi
  done
  if [[ $ok -eq 0 ]]; then
    echo "check_site_packages: UNEXPECTED .pth file in site-packages: $pth" >&2
    failed=1
  fi
done < <(find "$site_packages" -maxdepth 1 -name '*.pth' -print0)

if [[ $failed -ne 0 ]]; then
  echo "check_site_packages: supply-chain checks failed for $venv" >&2
  exit 1
fi
echo "check_site_packages: $venv passed (litellm ${litellm_version:-not installed})" >&2
