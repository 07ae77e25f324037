#!/usr/bin/env bash
# Makes sure RabbitMQ (with its management plugin), Redis and PostgreSQL are installed and
# running on this machine, installing them from Debian's packages when absent. Safe to run any
# number of times.
#
# PostgreSQL: the tests and `DATABASE=postgres scripts/run.sh` expect it on 127.0.0.1:5432 with
# user `postgres` and trust authentication for local connections (TEST_PG_URL names another
# server). On a fresh Debian machine the package's cluster is started with pg_ctlcluster (no
# systemd needed) and, only when it was created here, its pg_hba.conf is set to trust local
# connections; an existing server is used as it is (a password goes in TEST_PG_URL).
# SKIP_POSTGRES=1 leaves PostgreSQL out.
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
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ "${SKIP_POSTGRES:-0}" != 1 ] && ! port_open 5432 && [ -z "$(pg_bin)" ]; then
  missing+=(postgresql)
  fresh_postgres=1
fi
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

# Installed just now (the package may already have started its cluster, with password
# authentication), or installed but not running.
if [ "${SKIP_POSTGRES:-0}" != 1 ] && { [ "${fresh_postgres:-0}" = 1 ] || ! port_open 5432; }; then
  command -v pg_lsclusters >/dev/null || { log "PostgreSQL binaries without Debian's postgresql-common; start a server on 127.0.0.1:5432 yourself"; exit 1; }
  read -r version cluster _ < <(pg_lsclusters -h | awk '$3 == 5432 {print $1, $2}' | head -1) || true
  if [ -z "${version:-}" ]; then
    version=$(basename "$(dirname "$(pg_bin)")")
    log "creating PostgreSQL $version cluster main on port 5432"
    as_root pg_createcluster "$version" main --port 5432 >/dev/null
    cluster=main
    fresh_postgres=1
  fi
  hba=/etc/postgresql/$version/$cluster/pg_hba.conf
  if [ "${fresh_postgres:-0}" = 1 ]; then
    # A development machine: local connections as any user without a password, as the tests
    # expect. Not for a machine others can log in to.
    log "trusting local connections in $hba (development machine)"
    as_root sed -i 's/^\(local\|host\)\(\s\+all\s\+all\s\+.*\)\(peer\|md5\|scram-sha-256\)$/\1\2trust/' "$hba"
  fi
  if port_open 5432; then
    as_root pg_ctlcluster "$version" "$cluster" reload
  else
    log "starting PostgreSQL $version/$cluster on 127.0.0.1:5432"
    as_root pg_ctlcluster "$version" "$cluster" start
    wait_port 5432 60 postgresql
  fi
fi
if [ "${SKIP_POSTGRES:-0}" != 1 ]; then
  log "PostgreSQL (5432) is up"
fi
