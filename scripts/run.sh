#!/usr/bin/env bash
# Runs the whole system on this machine: RabbitMQ (with the management UI) and Redis, installed
# and started when absent, then every service built in release mode and started in the
# background with its log in .run/logs/. Ctrl-C stops the services (not RabbitMQ or Redis).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-deps.sh

services=(products orders gateway)
for optional in webhook-publisher notifier; do
  [ -d "$optional" ] && services+=("$optional")
done

echo "[run] building ${services[*]} (release)"
cargo build --release $(printf -- '-p %s ' "${services[@]}")

mkdir -p .run/logs data
export DATA_DIR=${DATA_DIR:-$PWD/data}
pids=()
stop() {
  echo; echo "[run] stopping services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "[run] stopped"
}
trap stop INT TERM

# HTTP_ADDR is cleared so each service takes its own default port.
for service in "${services[@]}"; do
  HTTP_ADDR= "target/release/$service" >".run/logs/$service.log" 2>&1 &
  pids+=($!)
done

port() { case $1 in gateway) echo 3000;; products) echo 3001;; orders) echo 3002;; webhook-publisher) echo 3003;; notifier) echo 8085;; esac; }
for service in "${services[@]}"; do
  for _ in $(seq 1 80); do curl -fs "http://127.0.0.1:$(port "$service")/health" >/dev/null 2>&1 && break; sleep 0.25; done
done

cat <<INFO
[run] the system is up (logs in .run/logs/, data in $DATA_DIR):
  API (gateway)       http://127.0.0.1:3000   OpenAPI at /openapi.json; a token for it:
                      target/release/dev-token --sub alice --role CLIENT   (or --role ADMIN to create products)
  products            http://127.0.0.1:3001/health  /ready  /metrics
  orders              http://127.0.0.1:3002/health  /ready  /metrics
$( [ -d webhook-publisher ] && echo "  webhook-publisher   http://127.0.0.1:3003/subscriptions  /deliveries" )
$( [ -d notifier ] && echo "  notifier (live page) http://127.0.0.1:8085/" )
  RabbitMQ management http://127.0.0.1:15672  (guest/guest)
Press Ctrl-C to stop.
INFO
wait
