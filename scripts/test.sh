#!/usr/bin/env bash
# Runs every test of the workspace against the real RabbitMQ, Redis and SQLite, after making sure
# they are installed and running, and after the formatting and lint checks (which fail fast:
# they take seconds, the tests minutes). Ends with one summary line:
# "Total: N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."

# rustfmt and clippy come with rustup's default profile; add them where a minimal one was used.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy || { echo "[test] rustfmt/clippy are missing and could not be added" >&2; exit 1; }
fi

echo "[test] cargo fmt --all --check"
if ! cargo fmt --all --check; then
  echo "[test] FAILED: the code is not formatted; run 'cargo fmt --all' and commit the result" >&2
  exit 1
fi
echo "[test] cargo clippy --workspace --all-targets -- -D warnings"
if ! cargo clippy --workspace --all-targets --color never -- -D warnings; then
  echo "[test] FAILED: clippy found warnings (above); fix them before the tests run" >&2
  exit 1
fi

bash scripts/ensure-deps.sh || exit 1
tools=$(bash scripts/ensure-test-tools.sh) || exit 1
export PATH="$tools:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast --color never 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

passed=$(grep -oE '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -oE '[0-9]+ ignored' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "Total: ${passed} passed, ${failed} failed, ${skipped} skipped"
exit "$status"
