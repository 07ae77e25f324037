#!/usr/bin/env bash
# Runs the whole system on this machine: RabbitMQ (with the management UI) and Redis, installed
# and started when absent, then every service built in release mode and started in the
# background with its log in .run/logs/. It says "up" only once every service answers /ready;
# a service that exits or is not ready in time stops the others, its log tail is printed and
# the script exits non-zero. Ctrl-C stops the services (not RabbitMQ or Redis).
#
# Secrets: JWT_SECRET and WEBHOOK_SECRET are taken from the environment when set, else generated
# once into .run/secrets.env (git-ignored, readable by you only) and reused on later runs.
set -euo pipefail
cd "$(dirname "$0")/.."

READY_WAIT_SECS=${READY_WAIT_SECS:-60}

bash scripts/ensure-deps.sh

services=(products orders gateway)
for optional in webhook-publisher notifier; do
  [ -d "$optional" ] && services+=("$optional")
done

echo "[run] building ${services[*]} (release)"
cargo build --release $(printf -- '-p %s ' "${services[@]}")

mkdir -p .run/logs data
secrets=.run/secrets.env
if [ ! -s "$secrets" ]; then
  (
    umask 077
    printf 'JWT_SECRET=%s\n' "$(head -c 48 /dev/urandom | base64 -w0)"
    printf 'WEBHOOK_SECRET=whsec_%s\n' "$(head -c 32 /dev/urandom | base64 -w0)"
  ) >"$secrets"
  echo "[run] generated JWT_SECRET and WEBHOOK_SECRET into $secrets"
fi
# What the shell already has wins over the file.
jwt=${JWT_SECRET:-}; webhook=${WEBHOOK_SECRET:-}
set -a; . "$secrets"; set +a
export JWT_SECRET=${jwt:-$JWT_SECRET} WEBHOOK_SECRET=${webhook:-$WEBHOOK_SECRET}
# Subscriptions on this machine (the notifier, local test endpoints) are allowed here.
export WEBHOOK_ALLOWED_NETWORKS=${WEBHOOK_ALLOWED_NETWORKS:-127.0.0.0/8,::1/128}
export DATA_DIR=${DATA_DIR:-$PWD/data}
# A start-up error is one line ("Error: …"), not a backtrace that pushes it out of the log tail.
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}

port() { case $1 in gateway) echo 3000;; products) echo 3001;; orders) echo 3002;; webhook-publisher) echo 3003;; notifier) echo 8085;; esac; }

declare -A pid_of=()
stop() {
  echo "[run] stopping services"
  for service in "${!pid_of[@]}"; do kill -TERM "${pid_of[$service]}" 2>/dev/null || true; done
  for service in "${!pid_of[@]}"; do wait "${pid_of[$service]}" 2>/dev/null || true; done
  echo "[run] stopped"
}
# Stops everything and explains why, with the log tail of the service that failed.
fail() { # service, what happened
  echo "[run] $1 $2; its log (.run/logs/$1.log) ends with:" >&2
  tail -n 30 ".run/logs/$1.log" | sed 's/^/    /' >&2
  stop
  exit 1
}
trap 'echo; stop; exit 0' INT TERM

# HTTP_ADDR is cleared so each service takes its own default port.
for service in "${services[@]}"; do
  HTTP_ADDR= "target/release/$service" >".run/logs/$service.log" 2>&1 &
  pid_of[$service]=$!
done

deadline=$((SECONDS + READY_WAIT_SECS))
waiting=("${services[@]}")
while [ "${#waiting[@]}" -gt 0 ]; do
  still=()
  for service in "${waiting[@]}"; do
    if ! kill -0 "${pid_of[$service]}" 2>/dev/null; then
      wait "${pid_of[$service]}" 2>/dev/null && code=0 || code=$?
      unset "pid_of[$service]"
      fail "$service" "exited (status $code) before it was ready"
    fi
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$(port "$service")/ready" || still+=("$service")
  done
  waiting=("${still[@]}")
  [ "${#waiting[@]}" -eq 0 ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    fail "${waiting[0]}" "was not ready within $READY_WAIT_SECS s (still waiting for: ${waiting[*]})"
  fi
  sleep 0.5
done

cat <<INFO
[run] the system is up (logs in .run/logs/, data in $DATA_DIR, secrets in $secrets):
  API (gateway)       http://127.0.0.1:3000   OpenAPI at /openapi.json; a token for it:
                      env \$(cat $secrets) target/release/dev-token --sub alice --role CLIENT   (or --role ADMIN to create products)
  products            http://127.0.0.1:3001/health  /ready  /metrics
  orders              http://127.0.0.1:3002/health  /ready  /metrics
$( [ -d webhook-publisher ] && echo "  webhook-publisher   http://127.0.0.1:3003/subscriptions  /deliveries   (ADMIN token)" )
$( [ -d notifier ] && echo "  notifier (live page) http://127.0.0.1:8085/" )
  RabbitMQ management http://127.0.0.1:15672  (guest/guest)
Press Ctrl-C to stop.
INFO

# Runs until Ctrl-C, or until a service exits by itself: then the others are stopped too.
set +e
wait -n "${pid_of[@]}"
code=$?
for service in "${!pid_of[@]}"; do
  if ! kill -0 "${pid_of[$service]}" 2>/dev/null; then
    unset "pid_of[$service]"
    fail "$service" "exited (status $code)"
  fi
done
stop
