#!/usr/bin/env bash
# Installs what only the tests need: Debian's chromium (the notifier's live-page test drives it
# headless) and docker-compose (its `config` validates compose.yaml; no engine needed), and schemathesis (PyPI) in a virtualenv of its own under .tools/ (git-ignored), since
# Debian's system Python refuses global pip installs. Prints the directory to put on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/venv
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)             # the notifier's live-page test
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose) # `config` checks compose.yaml
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus) # e2e/tests/monitoring.rs
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[tools] installing ${missing[*]}" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

if [ ! -x "$venv/bin/schemathesis" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "[tools] installing python3-venv" >&2
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >&2
  fi
  echo "[tools] installing schemathesis into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "schemathesis>=4,<5" >&2
fi
echo "$PWD/$venv/bin"
