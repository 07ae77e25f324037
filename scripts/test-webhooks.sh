#!/usr/bin/env bash
# Runs the tests of the webhook publisher and the notifier (and the messaging library they
# share) against the broker on 127.0.0.1:5672 (management API on :15672) and Redis on :6379.
#
# The live-page test drives headless Chromium; Debian's `chromium` package is installed here
# when it is missing, so the test always runs (in CI it fails rather than skips without it).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium for the live-page test" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

cargo test -p messaging -p webhook-publisher -p notifier "$@"
