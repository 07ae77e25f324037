#!/usr/bin/env bash
# Runs the whole system on this machine: RabbitMQ (with the management UI) and Redis, installed
# and started when absent, then every service built in release mode and started in the
# background with its log in .run/logs/. It says "up" only once every service answers /ready;
# a service that exits or is not ready in time stops the others, its log tail is printed and
# the script exits non-zero. Ctrl-C stops the services (not RabbitMQ or Redis).
#
# Secrets: JWT_SECRET and WEBHOOK_SECRET are taken from the environment when set, else generated
# once into .run/secrets.env (git-ignored, readable by you only) and reused on later runs.
#
# Storage and instances (README, "Several instances"):
#   DATABASE=sqlite (default)  orders, products and webhook-publisher keep SQLite files in DATA_DIR.
#   DATABASE=postgres          they use the local PostgreSQL (PG_URL, default
#                              postgres://postgres@127.0.0.1:5432), each its own database
#                              <PG_DB_PREFIX>orders / products / webhooks (prefix `saga_`),
#                              created when absent and kept across runs.
#   INSTANCES=N (default 1)    N instances of the gateway, orders, products and webhook-publisher
#                              (N > 1 needs DATABASE=postgres); instance i listens on the service's
#                              port + 10·(i−1) (gateways on 3000, 3010, …), logs in
#                              .run/logs/<service>-<i>.log. The notifier stays single.
#   DATABASE_POOL_SIZE         connections per instance; on PostgreSQL it defaults here to
#                              60 / (3·INSTANCES) so that every pool together stays well under the
#                              server's max_connections (100 by default), see docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."

READY_WAIT_SECS=${READY_WAIT_SECS:-60}
DATABASE=${DATABASE:-sqlite}
INSTANCES=${INSTANCES:-1}
case $DATABASE in sqlite|postgres) ;; *) echo "[run] DATABASE must be sqlite or postgres, not '$DATABASE'" >&2; exit 2;; esac
if ! [[ $INSTANCES =~ ^[1-9]$ ]]; then echo "[run] INSTANCES must be 1 to 9, not '$INSTANCES'" >&2; exit 2; fi
if [ "$INSTANCES" -gt 1 ] && [ "$DATABASE" != postgres ]; then
  echo "[run] several instances share their state through PostgreSQL: INSTANCES=$INSTANCES DATABASE=postgres scripts/run.sh" >&2
  exit 2
fi
[ "$DATABASE" = sqlite ] && export SKIP_POSTGRES=${SKIP_POSTGRES:-1}

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

# With DATABASE=postgres: a database per service, created when absent.
declare -A database_of=([orders]=orders [products]=products [webhook-publisher]=webhooks)
if [ "$DATABASE" = postgres ]; then
  PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
  PG_DB_PREFIX=${PG_DB_PREFIX:-saga_}
  for service in "${!database_of[@]}"; do
    db="$PG_DB_PREFIX${database_of[$service]}"
    if ! psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
      psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$db\"" >/dev/null
      echo "[run] created database $db"
    fi
  done
  export DATABASE_POOL_SIZE=${DATABASE_POOL_SIZE:-$(( 60 / (3 * INSTANCES) ))}
fi
# The environment of one instance of a service: `instance_env orders 2`.
instance_env() {
  local service=$1 i=$2
  local base; base=$(port "$service")
  # The first takes its default port (HTTP_ADDR cleared), the others the next tens.
  if [ "$i" = 1 ]; then echo "HTTP_ADDR="; else echo "HTTP_ADDR=0.0.0.0:$((base + 10 * (i - 1)))"; fi
  if [ "$DATABASE" = postgres ] && [ -n "${database_of[$service]:-}" ]; then
    echo "DATABASE_URL=$PG_URL/$PG_DB_PREFIX${database_of[$service]}"
  fi
}
scaled() { [ "$1" != notifier ]; }
# A start-up error is one line ("Error: …"), not a backtrace that pushes it out of the log tail.
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}

port() { case $1 in gateway) echo 3000;; products) echo 3001;; orders) echo 3002;; webhook-publisher) echo 3003;; notifier) echo 8085;; esac; }
# `orders` → 3002, `orders-2` → 3012.
port_of() { local s=${1%-[0-9]} i=1; [[ $1 =~ -([0-9])$ ]] && i=${BASH_REMATCH[1]}; echo $(( $(port "$s") + 10 * (i - 1) )); }

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

# Every instance: `orders` is the first, `orders-2` … the others.
instances=()
for service in "${services[@]}"; do
  instances+=("$service")
  if scaled "$service"; then
    for i in $(seq 2 "$INSTANCES"); do instances+=("$service-$i"); done
  fi
done
for name in "${instances[@]}"; do
  service=${name%-[0-9]}; i=1; [[ $name =~ -([0-9])$ ]] && i=${BASH_REMATCH[1]}
  # shellcheck disable=SC2046 # one VAR=value word per line
  env $(instance_env "$service" "$i") "target/release/$service" >".run/logs/$name.log" 2>&1 &
  pid_of[$name]=$!
done

deadline=$((SECONDS + READY_WAIT_SECS))
waiting=("${instances[@]}")
while [ "${#waiting[@]}" -gt 0 ]; do
  still=()
  for service in "${waiting[@]}"; do
    if ! kill -0 "${pid_of[$service]}" 2>/dev/null; then
      wait "${pid_of[$service]}" 2>/dev/null && code=0 || code=$?
      unset "pid_of[$service]"
      fail "$service" "exited (status $code) before it was ready"
    fi
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$(port_of "$service")/ready" || still+=("$service")
  done
  waiting=("${still[@]}")
  [ "${#waiting[@]}" -eq 0 ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    fail "${waiting[0]}" "was not ready within $READY_WAIT_SECS s (still waiting for: ${waiting[*]})"
  fi
  sleep 0.5
done

if [ "$DATABASE" = postgres ]; then
  where="PostgreSQL $PG_URL/${PG_DB_PREFIX}{orders,products,webhooks}, pool $DATABASE_POOL_SIZE per instance"
else
  where="data in $DATA_DIR"
fi
more=""
if [ "$INSTANCES" -gt 1 ]; then
  more="  instances 2..$INSTANCES  each on its service's port + 10 per instance (gateways: $(for i in $(seq 1 "$INSTANCES"); do printf 'http://127.0.0.1:%s ' $((3000 + 10 * (i - 1))); done))"
fi
cat <<INFO
[run] the system is up, $INSTANCES instance(s) of each service (logs in .run/logs/, $where, secrets in $secrets):
  API (gateway)       http://127.0.0.1:3000   OpenAPI at /openapi.json; a token for it:
                      env \$(cat $secrets) target/release/dev-token --sub alice --role CLIENT   (or --role ADMIN to create products)
  products            http://127.0.0.1:3001/health  /ready  /metrics
  orders              http://127.0.0.1:3002/health  /ready  /metrics
$( [ -d webhook-publisher ] && echo "  webhook-publisher   http://127.0.0.1:3003/subscriptions  /deliveries   (ADMIN token)" )
$( [ -d notifier ] && echo "  notifier (live page) http://127.0.0.1:8085/" )
  RabbitMQ management http://127.0.0.1:15672  (guest/guest)
$more
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
