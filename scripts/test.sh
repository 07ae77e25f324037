#!/usr/bin/env bash
# Runs every test of the workspace against the real RabbitMQ, Redis and SQLite, after making sure
# they are installed and running. Ends with one summary line: "Total: N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."

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
