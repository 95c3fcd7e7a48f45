#!/usr/bin/env bash
# Prepare this checkout: system packages (Debian), .venv, the project installed in it.
# Idempotent and quiet when there is nothing to do.
#   bash scripts/bootstrap.sh          # for serving: no test tools, and torch (the `lora` extra) only
#                                      # when the settings in the environment use the lora reranker
#   bash scripts/bootstrap.sh --test   # everything: the `dev` and `lora` extras, Debian chromium
#   --check-site-packages              # run scripts/check_site_packages.sh before any interpreter of
#                                      # an existing venv starts, and again right after installing
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail

_bootstrap_main() {
  local test_mode=0 check=0 arg
  for arg in "$@"; do
    case "$arg" in
      --test) test_mode=1 ;;
      --check-site-packages) check=1 ;;
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
  # the official openai Node SDK drives the proxy in a conformance test (tests/node)
  if [[ $test_mode -eq 1 ]] && ! { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; }; then
    apt_pkgs+=(nodejs npm)
  fi
  # the cluster and Sentinel tests create clusters with redis-cli
  if [[ $test_mode -eq 1 ]] && _have_redis_server && ! command -v redis-cli >/dev/null 2>&1; then
    apt_pkgs+=(redis-tools)
  fi
  # the TLS cluster test makes its certificates with the openssl command (not in minimal images)
  if [[ $test_mode -eq 1 ]] && ! command -v openssl >/dev/null 2>&1; then
    apt_pkgs+=(openssl)
  fi
  # the benchmarks' load generator (benchmarks/_harness.py); small, so test set-ups get it too
  if [[ $test_mode -eq 1 ]] && ! command -v wrk >/dev/null 2>&1; then
    apt_pkgs+=(wrk)
  fi
  if [[ ${#apt_pkgs[@]} -gt 0 ]]; then
    _apt_install "${apt_pkgs[@]}"
  fi

  # --- virtual environment ----------------------------------------------------------------
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: $python is missing or older than 3.11 (set PYTHON=python3.11 or newer)" >&2
    return 1
  fi
  # With --check-site-packages, no interpreter of the venv starts before its site-packages passed the
  # checks: right after it is created (before pip runs in it), and right after every install.
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "bootstrap: creating $venv" >&2
    "$python" -m venv "$venv"
    _check "$check" "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
  fi
  _check "$check" "$venv"

  # Extras: the tests need everything; serving needs `lora` (torch) only if its settings use it.
  local digest stamp="$venv/.bootstrap-stamp" installed="" fresh=1 want
  digest="$(cat pyproject.toml sdk/pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" ]] && [[ "$(head -n1 "$stamp")" == "$digest" ]] && "$venv/bin/python" -c "import middleware" 2>/dev/null; then
    installed="$(sed -n 's/^extras=//p' "$stamp")"
    fresh=0
  fi
  if [[ $test_mode -eq 1 ]]; then
    want="dev,lora"
  else
    if [[ $fresh -eq 1 ]]; then
      _install "$venv" "$digest" ""
      _check "$check" "$venv"
      fresh=0
    fi
    want=""
    if _lora_wanted "$venv"; then
      want="lora"
    fi
  fi
  local missing
  missing="$(_missing_extras "$want" "$installed")"
  if [[ $fresh -eq 1 || -n "$missing" ]]; then
    _install "$venv" "$digest" "$(_join_extras "$installed" "$missing")"
    _check "$check" "$venv"
  fi
}

_check() {
  if [[ $1 -eq 1 ]]; then
    bash scripts/check_site_packages.sh "$2"
  fi
}

# pip install the project (editable) and its SDK distribution with the given extras; record them.
_install() {
  local venv="$1" digest="$2" extras="$3" target="."
  if [[ -n "$extras" ]]; then
    target=".[$extras]"
  fi
  echo "bootstrap: installing the project${extras:+ with extras [$extras]} into $venv" >&2
  # (the machine's pip configuration names index folders that may be absent: drop those warnings)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target" ./sdk \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  printf '%s\nextras=%s\n' "$digest" "$extras" > "$venv/.bootstrap-stamp"
}

# Whether the settings `persona serve` will read (the environment) use the lora reranker.
_lora_wanted() {
  "$1/bin/python" -c 'from middleware.config import Settings; raise SystemExit(not Settings().lora_wanted())' \
    2>/dev/null
}

# The extras of $1 (comma-separated) that are not in $2.
_missing_extras() {
  local e out=()
  local -a wanted
  IFS=, read -r -a wanted <<< "$1"
  for e in "${wanted[@]}"; do
    if [[ -n "$e" && ",$2," != *",$e,"* ]]; then
      out+=("$e")
    fi
  done
  (IFS=,; echo "${out[*]}")
}

_join_extras() {
  if [[ -n "$1" && -n "$2" ]]; then
    echo "$1,$2"
  else
    echo "$1$2"
  fi
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
