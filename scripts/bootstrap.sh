#!/usr/bin/env bash
# Prepare this checkout: system packages (Debian), .venv, the project installed in it.
# Idempotent and quiet when there is nothing to do.
#   bash scripts/bootstrap.sh          # for serving
#   bash scripts/bootstrap.sh --test   # also what the test suite needs (Debian chromium)
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail

_bootstrap_main() {
  local test_mode=0 arg
  for arg in "$@"; do
    case "$arg" in
      --test) test_mode=1 ;;
      *) echo "bootstrap.sh: unknown argument: $arg" >&2; return 2 ;;
    esac
  done

  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cd "$root"
  local python="${PYTHON:-python3}"
  local venv="${VENV:-.venv}"

  # --- system packages -------------------------------------------------------------------
  local apt_pkgs=()
  if ! _have_redis_server; then
    apt_pkgs+=(redis-server)
  fi
  if [[ ! -x "$venv/bin/python" ]] && ! _venv_works "$python"; then
    apt_pkgs+=(python3-venv)
  fi
  if [[ $test_mode -eq 1 && ! -x /usr/bin/chromium ]]; then
    apt_pkgs+=(chromium)
  fi
  if [[ ${#apt_pkgs[@]} -gt 0 ]]; then
    _apt_install "${apt_pkgs[@]}"
  fi

  # --- virtual environment ----------------------------------------------------------------
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: $python is missing or older than 3.11 (set PYTHON=python3.11 or newer)" >&2
    return 1
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "bootstrap: creating $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
  fi

  local extras="dev"
  if grep -Eq '^[[:space:]]*lora[[:space:]]*=' pyproject.toml; then
    extras="dev,lora"
  fi
  local stamp="$venv/.bootstrap-stamp"
  local want
  want="$( (cat pyproject.toml; echo "extras=$extras") | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c "import middleware" 2>/dev/null; then
    return 0
  fi
  echo "bootstrap: installing the project with extras [$extras] into $venv" >&2
  # (the machine's pip configuration names index folders that may be absent: drop those warnings)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
}

_have_redis_server() {
  command -v redis-server >/dev/null 2>&1 || [[ -x /usr/sbin/redis-server || -x /usr/bin/redis-server ]]
}

_venv_works() {
  local tmp ok=1
  tmp="$(mktemp -d)"
  if "$1" -m venv "$tmp/v" >/dev/null 2>&1 && [[ -x "$tmp/v/bin/pip" ]]; then
    ok=0
  fi
  rm -rf "$tmp"
  return $ok
}

_apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: please install: $* (no apt-get here)" >&2
    return 1
  fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "bootstrap: run as root, or install first: apt-get install $*" >&2
      return 1
    fi
    sudo="sudo"
  fi
  echo "bootstrap: apt-get install $*" >&2
  # Do not let package scripts start services (a redis-server on 6379 may already be running).
  local policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  local rc=0
  {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  } || rc=$?
  if [[ $policy_added -eq 1 ]]; then
    $sudo rm -f /usr/sbin/policy-rc.d
  fi
  return $rc
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _bootstrap_main "$@"
else
  # sourced: run in a subshell so that `set -e` and `cd` do not leak into the caller
  (_bootstrap_main "$@")
fi
