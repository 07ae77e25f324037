#!/usr/bin/env bash
# Makes sure RabbitMQ (with its management plugin) and Redis are installed and running on this
# machine, installing them from Debian's packages when absent. Safe to run any number of times.
set -euo pipefail

log() { printf '[deps] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, seconds, what
  for _ in $(seq 1 $(($2 * 4))); do port_open "$1" && return 0; sleep 0.25; done
  log "$3 did not open port $1 within $2 s"; return 1
}

command -v cargo >/dev/null || { log "cargo is missing: install the Rust toolchain (https://rustup.rs) first"; exit 1; }

missing=()
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v gcc >/dev/null || missing+=(gcc)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! port_open 6379; then
  log "starting redis-server on 127.0.0.1:6379"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 20 redis-server
fi

if ! port_open 5672; then
  log "starting rabbitmq-server on 127.0.0.1:5672"
  as_root rabbitmq-server -detached
  wait_port 5672 120 rabbitmq-server
fi

if ! port_open 15672; then
  log "enabling the RabbitMQ management plugin (UI on http://127.0.0.1:15672, guest/guest)"
  as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_port 15672 60 "rabbitmq management"
fi
log "RabbitMQ (5672, management 15672) and Redis (6379) are up"
