#!/usr/bin/env bash
# Benchmarks of issue 5 (see docs/benchmarks.md): builds release binaries, starts the five
# services as separate processes against a dedicated vhost, Redis key prefix and data dir,
# runs the scenarios with `loadgen`, and stops and cleans up everything on exit, also on
# failure or Ctrl-C. Every scenario gets a fresh system (new vhost, prefix, data dir).
#
#   bash scripts/bench.sh                       # every scenario, defaults below
#   SCENARIOS="saturation ceiling" bash scripts/bench.sh
#
# Every load report has a process table: each service's CPU seconds during the load phase (and
# the broker's and Redis' server, found by pid), as % of one core and as CPU ms per 1,000 orders
# decided during the load (the cost of an order; compare builds at one fixed open-loop rate, A/B
# interleaved, e.g. two copies of the binaries run with BENCH_SKIP_BUILD=1 and CARGO_TARGET_DIR
# pointing at each in turn). REDIS_URL with REDIS_PID: a Redis server of your own (e.g.
# `redis-server --port 6390 --save ""`) and its pid, so that its CPU is the benchmark's alone.
#
# Knobs (environment): SCENARIOS (saturation ceiling rates soak; webhook deliveries/s are in
# every load report), DURATION (30 s per
# run), REPEAT (2 runs of each measurement), CONCURRENCY (64 clients at saturation), RATES
# ("100 500 1000"), SOAK_SECS (600), SOAK_RATE (500) and SOAK_RETENTION_SECS (120: the soak's
# INBOX_RETENTION_SECS and WEBHOOK_HISTORY_RETENTION_SECS, so the pruning shows within it; the
# soak prints each SQLite file's size and its tables' row counts every minute), BENCH_RUST_LOG (warn), PORT_BASE (23000),
# BENCH_OUT (where the tables are also written), SERVICE_ENV (extra VAR=value words for the five
# services only, not the load generator, e.g. "ORDERS_PREFETCH=64" or "TOKIO_WORKER_THREADS=1"
# (docs/benchmarks.md, change 7) for an A/B run), BENCH_SKIP_BUILD=1 (run the binaries already in $CARGO_TARGET_DIR/release, e.g. to compare a
# copy of an older build against the current one), CEILING_ARGS (extra words for `loadgen
# ceiling`, e.g. "--single-acks" for the ceiling with one ack per message), PRIVATE_BROKER (1 by
# default: every scenario runs against a RabbitMQ node of the benchmark's own, on ports
# PORT_BASE+200..203 and a temp data dir; 0: against the broker at AMQP_BASE/RABBITMQ_MANAGEMENT_URL,
# the machine's shared one by default) and BROKER_CONF (extra rabbitmq.conf lines for the own
# node, separated by ';'). The node gets the broker settings that compose ships
# (deploy/rabbitmq/rabbitmq.conf, without its definitions); BROKER_CONF comes after them and wins,
# e.g. "raft.wal_max_size_bytes = 536870912" for RabbitMQ's default WAL size; SERIES_EVERY
# (seconds: loadgen prints p50/p99/max of POST → terminal for every such interval).
# The overload scenario (not in the default list: SCENARIOS="saturation overload") offers
# OVERLOAD_RATE orders/s (default: twice the best saturation figure of this run, else 1700) for
# OVERLOAD_SECS (60) in open loop and waits up to OVERLOAD_DRAIN (60) s for the accepted orders;
# its report has accepted, refused (503), p99 POST → decision of the accepted orders and the
# time from the end of the load to the last decision, then the gateway's refusal counters. Size
# the bound with SERVICE_ENV="ORDERS_ADMISSION_LIMIT=…" (docs/operations.md).
#
# Backend and instances (issue 12; docs/benchmarks.md, "SQLite against PostgreSQL"):
# BACKEND=sqlite|postgres (sqlite): where orders, products and webhook-publisher keep their state;
# on postgres every system gets fresh databases bench_<vhost>_{orders,products,webhooks} on PG_URL
# (postgres://postgres@127.0.0.1:5432, the machine's server), dropped when it stops.
# INSTANCES=1..4 (1): instances of the gateway, orders, products and webhook-publisher (the
# notifier stays single); more than 1 needs BACKEND=postgres. Instance i listens on its
# service's port + 10·(i−1); loadgen sends the orders to the gateways in turn.
# PG_POOL_SIZE: DATABASE_POOL_SIZE of each instance (default 60 / (3·INSTANCES), so that all pools
# fit the server's max_connections of 100 next to other users).
# CONFIGS="sqlite:1 postgres:1 postgres:2": runs every scenario once per backend:instances pair,
# one after the other in this one run (default: "$BACKEND:$INSTANCES"), each table headed by it.
# PRODUCTS (1): products loadgen creates and orders in turn. With one, every reserve takes the
# same product row's lock (the worst case for PostgreSQL); with several, what is left is the
# cost of the stores themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"saturation ceiling rates soak"}
BACKEND=${BACKEND:-sqlite}
INSTANCES=${INSTANCES:-1}
CONFIGS=${CONFIGS:-"$BACKEND:$INSTANCES"}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
for config in $CONFIGS; do
  case ${config%%:*} in sqlite|postgres) ;; *) echo "[bench] $config: the backend is sqlite or postgres" >&2; exit 2;; esac
  n=${config#*:}
  if ! [[ $n =~ ^[1-4]$ ]]; then echo "[bench] $config: 1 to 4 instances" >&2; exit 2; fi
  if [ "$n" -gt 1 ] && [ "${config%%:*}" != postgres ]; then
    echo "[bench] $config: several instances share their state through PostgreSQL (postgres:$n)" >&2; exit 2
  fi
done
DURATION=${DURATION:-30}
REPEAT=${REPEAT:-2}
CONCURRENCY=${CONCURRENCY:-64}
RATES=${RATES:-"100 500 1000"}
SOAK_SECS=${SOAK_SECS:-600}
SOAK_RATE=${SOAK_RATE:-500}
SOAK_RETENTION_SECS=${SOAK_RETENTION_SECS:-120}
PORT_BASE=${PORT_BASE:-23000}
MGMT=${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}
AMQP_BASE=${AMQP_BASE:-amqp://guest:guest@127.0.0.1:5672}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export RUST_LOG=${BENCH_RUST_LOG:-warn}
BIN=${CARGO_TARGET_DIR:-target}/release
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
BENCH_OUT=${BENCH_OUT:-/tmp/bench-$STAMP.md}
WORK=$(mktemp -d /tmp/bench.XXXXXX)
# Fresh secrets of the length the services require outside APP_ENV=development (32 bytes).
JWT_SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export JWT_SECRET
export WEBHOOK_SECRET="whsec_$(head -c 32 /dev/urandom | base64 -w0)"
# Local sinks and the notifier on this machine are allowed webhook targets for the run.
export WEBHOOK_ALLOWED_NETWORKS=${WEBHOOK_ALLOWED_NETWORKS:-127.0.0.0/8}

pids=()
vhost=""
prefix=""

log() { echo "[bench] $*" >&2; }
out() { echo "$@" | tee -a "$BENCH_OUT"; }

mgmt() { curl -fsS -u guest:guest -H 'content-type: application/json' "$@"; }

new_vhost() {
  vhost="bench-$1-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  prefix="$vhost:"
  mgmt -XPUT "$MGMT/api/vhosts/$vhost" -d '{}' >/dev/null
  mgmt -XPUT "$MGMT/api/permissions/$vhost/guest" -d '{"configure":".*","write":".*","read":".*"}' >/dev/null
}

drop_vhost() {
  if [ -n "$vhost" ]; then
    mgmt -XDELETE "$MGMT/api/vhosts/$vhost" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "${prefix}*" 2>/dev/null \
      | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    vhost=""
  fi
}

stop_system() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  drop_databases
  drop_vhost
}

databases=()
# On BACKEND=postgres: fresh databases for the system about to start; sets $db_prefix.
create_databases() {
  db_prefix="bench_${vhost//-/_}_"
  for db in orders products webhooks; do
    psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$db_prefix$db\"" >/dev/null
    databases+=("$db_prefix$db")
  done
}

drop_databases() {
  for db in "${databases[@]}"; do
    psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  databases=()
}

broker_pids=()
# The own node's AMQP, management, distribution and epmd ports.
BROKER_PORTS=($((PORT_BASE + 200)) $((PORT_BASE + 201)) $((PORT_BASE + 202)) $((PORT_BASE + 203)))

# Starts a RabbitMQ node of our own (its own epmd, ports and data dir under $WORK, as the chaos
# suite does; see shared/broker-node.md) and points AMQP_BASE and MGMT at it.
start_private_broker() {
  local dir="$WORK/broker" amqp=${BROKER_PORTS[0]} web=${BROKER_PORTS[1]}
  local dist=${BROKER_PORTS[2]} epmd=${BROKER_PORTS[3]}
  # A node of an earlier run that is still going down would answer our readiness check.
  if ! wait_ports_closed "${BROKER_PORTS[@]}"; then
    log "ports $amqp..$epmd are still in use (an earlier private broker?)"; return 1
  fi
  mkdir -p "$dir/log" "$dir/mnesia"
  {
    echo "listeners.tcp.default = 127.0.0.1:$amqp"
    echo "management.tcp.port = $web"
    echo "management.tcp.ip = 127.0.0.1"
    echo "disk_free_limit.absolute = 50MB"
    grep -v '^load_definitions' deploy/rabbitmq/rabbitmq.conf
    echo "${BROKER_CONF:-}" | tr ';' '\n' | sed 's/^ *//'
  } > "$dir/rabbitmq.conf"
  echo "[rabbitmq_management]." > "$dir/enabled_plugins"
  : > "$dir/rabbitmq-env.conf"
  ERL_EPMD_PORT=$epmd epmd -port "$epmd" -address 127.0.0.1 >/dev/null 2>&1 &
  broker_pids+=($!)
  RABBITMQ_NODENAME="bench$amqp@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_NODE_PORT=$amqp RABBITMQ_DIST_PORT=$dist ERL_EPMD_PORT=$epmd ERL_EPMD_ADDRESS=127.0.0.1 \
  RABBITMQ_BASE="$dir" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_PID_FILE="$dir/node.pid" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
  RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
  RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
  ERL_CRASH_DUMP="$dir/erl_crash.dump" \
    /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/server.log" 2>&1 &
  local server=$!
  broker_pids+=($server)
  AMQP_BASE="amqp://guest:guest@127.0.0.1:$amqp"
  MGMT="http://127.0.0.1:$web"
  for _ in $(seq 1 240); do
    kill -0 "$server" 2>/dev/null || break
    if mgmt "$MGMT/api/overview" >/dev/null 2>&1; then
      # The script runs the node as its child (erl execs into beam.smp).
      BROKER_PID=$(pgrep -P "$server" -x beam.smp | head -1 || true)
      log "private broker bench$amqp@localhost up on $amqp (management $web), beam pid ${BROKER_PID:-?}"
      return 0
    fi
    sleep 0.5
  done
  log "the private broker did not start"; tail -20 "$dir/server.log" >&2; return 1
}

stop_private_broker() {
  [ ${#broker_pids[@]} -gt 0 ] || return 0
  if [ -n "${BROKER_PID:-}" ]; then kill -KILL "$BROKER_PID" 2>/dev/null || true; fi
  for pid in "${broker_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  broker_pids=()
  # After a SIGKILL the node holds its ports for a few seconds (shared/broker-node.md).
  wait_ports_closed "${BROKER_PORTS[@]}" || true
}

# True once none of the given local TCP ports is listening (waits up to 20 s).
wait_ports_closed() {
  for _ in $(seq 1 80); do
    local busy=""
    for p in "$@"; do
      if ss -Hltn "sport = :$p" | grep -q .; then busy=1; fi
    done
    [ -z "$busy" ] && return 0
    sleep 0.25
  done
  return 1
}

cleanup() {
  local rc=$?
  stop_system
  stop_private_broker
  rm -rf "$WORK"
  if [ $rc -ne 0 ]; then log "failed (exit $rc); logs were in $WORK (removed)"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { case $1 in gateway) echo $((PORT_BASE));; products) echo $((PORT_BASE+1));; orders) echo $((PORT_BASE+2));; webhook-publisher) echo $((PORT_BASE+3));; notifier) echo $((PORT_BASE+85));; esac; }
SERVICES=(products orders gateway notifier webhook-publisher)
# `orders` → its port, `orders-2` → its port + 10.
port_of() { local s=${1%-[0-9]} i=1; [[ $1 =~ -([0-9])$ ]] && i=${BASH_REMATCH[1]}; echo $(( $(port "$s") + 10 * (i - 1) )); }
# Every process of a system: `orders`, then `orders-2` … (the notifier stays single).
instances() {
  for s in "${SERVICES[@]}"; do
    echo "$s"
    if [ "$s" != notifier ]; then for i in $(seq 2 "$INSTANCES"); do echo "$s-$i"; done; fi
  done
}
gateways() { local list="" g; for g in $(instances | grep '^gateway'); do list+="${list:+,}http://127.0.0.1:$(port_of "$g")"; done; echo "$list"; }
# Every webhook-publisher's /metrics: each counts only the deliveries it made.
publisher_metrics() { local list="" p; for p in $(instances | grep '^webhook-publisher'); do list+="${list:+,}http://127.0.0.1:$(port_of "$p")/metrics"; done; echo "$list"; }
database_of() { case $1 in orders) echo orders;; products) echo products;; webhook-publisher) echo webhooks;; esac; }

# Starts all five services on a fresh vhost, prefix and data dir; sets $PIDS_SPEC.
start_system() {
  new_vhost "$1"
  local data="$WORK/$vhost"
  mkdir -p "$data/logs"
  local names
  mapfile -t names < <(instances)
  if [ "$BACKEND" = postgres ]; then create_databases; fi
  for name in "${names[@]}"; do
    local s=${name%-[0-9]} db_env=()
    if [ "$BACKEND" = postgres ] && [ -n "$(database_of "$s")" ]; then
      db_env=("DATABASE_URL=$PG_URL/$db_prefix$(database_of "$s")"
              "DATABASE_POOL_SIZE=${PG_POOL_SIZE:-$(( 60 / (3 * INSTANCES) ))}")
    fi
    HTTP_ADDR="127.0.0.1:$(port_of "$name")" \
    AMQP_URL="$AMQP_BASE/$vhost" \
    REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="$prefix" \
    DATA_DIR="$data/$name" \
    NOTIFIER_URL="http://127.0.0.1:$(port notifier)/webhooks" \
    RATE_LIMIT_PER_SEC=0 \
      env "${db_env[@]}" ${SERVICE_ENV:-} "$BIN/$s" >"$data/logs/$name.log" 2>&1 &
    pids+=($!)
  done
  for name in "${names[@]}"; do
    local ok=""
    for _ in $(seq 1 120); do
      if curl -fs "http://127.0.0.1:$(port_of "$name")/ready" >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.25
    done
    if [ -z "$ok" ]; then log "$name did not become ready"; tail -20 "$data/logs/$name.log" >&2; return 1; fi
  done
  PIDS_SPEC=""
  local i=0
  for name in "${names[@]}"; do PIDS_SPEC+="$name=${pids[$i]},"; i=$((i+1)); done
  local beam redis
  beam=${BROKER_PID:-$(pgrep -o -x beam.smp || true)}; redis=${REDIS_PID:-$(pgrep -o -x redis-server || true)}
  local which=shared; [ -n "${BROKER_PID:-}" ] && which=own
  local redis_which=shared; [ -n "${REDIS_PID:-}" ] && redis_which=own
  [ -n "$beam" ] && PIDS_SPEC+="rabbitmq($which)=$beam,"
  [ -n "$redis" ] && PIDS_SPEC+="redis($redis_which)=$redis,"
}

# With DUMP_METRICS=1, prints each service's commit and handler timings before it is stopped
# (summaries from /metrics: where the time of a message goes).
dump_metrics() {
  [ "${DUMP_METRICS:-0}" = 1 ] || return 0
  for s in "${SERVICES[@]}"; do
    curl -fsS "http://127.0.0.1:$(port "$s")/metrics" 2>/dev/null \
      | grep -E "^(sqlite_group_commit|sqlite_memory_bytes|sqlite_wal_frames|message_handle_seconds|consumer_ack_batch_size)" | grep -vE 'quantile="0"|quantile="1"' \
      | sed "s/^/$s /" | tee -a "$BENCH_OUT" || true
  done
}

# Every $1 seconds, prints the SQLite memory (`sqlite_memory_bytes`, page caches and statements)
# of each service with a database, next to loadgen's RSS lines: RSS that grows while SQLite's
# own memory holds still is a leak of ours, RSS that grows with it is the page caches filling.
sample_sqlite_memory() {
  local every=$1 start=$SECONDS
  while sleep "$every"; do
    local row="sqlite t=$((SECONDS - start))s"
    for s in orders products webhook-publisher; do
      local bytes
      bytes=$(curl -fsS "http://127.0.0.1:$(port "$s")/metrics" 2>/dev/null | sed -n 's/^sqlite_memory_bytes \([0-9.e+]*\)$/\1/p')
      row+=" $s=$(awk -v b="${bytes:-0}" 'BEGIN{printf "%.1fMiB", b/1048576}')"
    done
    out "$row"
  done
}

# Every $1 seconds, the size of each service's SQLite file (database + WAL) and the row counts
# of its tables: the bounded ones (inbox, outbox, delivery history: issue 14) must stay flat
# once their retention has passed; the business records (orders, their history, reservations)
# grow by design. Read with the sqlite3 shell next to the live services (WAL readers never
# block the writer).
sample_tables() {
  local every=$1 start=$SECONDS
  while sleep "$every"; do
    local t=$((SECONDS - start)) s
    for s in orders products webhook-publisher; do
      local dir="$WORK/$vhost/$s" file tables
      case $s in
        orders) file=orders.db; tables="inbox outbox orders order_history" ;;
        products) file=products.db; tables="inbox outbox reservations" ;;
        webhook-publisher) file=webhooks.db; tables="inbox outbox deliveries attempts" ;;
      esac
      [ -f "$dir/$file" ] || continue
      local bytes=0 f row="tables t=${t}s $s"
      for f in "$dir/$file" "$dir/$file-wal"; do
        [ -f "$f" ] && bytes=$((bytes + $(stat -c %s "$f")))
      done
      row+=" file=$(awk -v b="$bytes" 'BEGIN{printf "%.1fMiB", b/1048576}')"
      local table
      for table in $tables; do
        row+=" $table=$(sqlite3 -cmd ".timeout 5000" "$dir/$file" "SELECT COUNT(*) FROM $table" 2>/dev/null || echo '?')"
      done
      out "$row"
    done
  done
}

loadgen() {
  "$BIN/loadgen" --gateway "$(gateways)" --amqp-url "$AMQP_BASE/$vhost" \
    --pids "$PIDS_SPEC" --webhook-metrics "$(publisher_metrics)" \
    --products "${PRODUCTS:-1}" ${SERIES_EVERY:+--series-every "$SERIES_EVERY"} "$@" \
    | tee -a "$BENCH_OUT"
}

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
  log "BENCH_SKIP_BUILD=1: using the binaries already in $BIN"
else
  log "building release binaries into $BIN"
  cargo build --release -q -p gateway -p orders -p products -p webhook-publisher -p notifier -p loadgen
fi

if [ "${PRIVATE_BROKER:-1}" = 1 ]; then start_private_broker; fi

out "# bench run $STAMP"
out ""
out "nproc $(nproc), $(free -m | awk '/Mem:/{print $2" MiB RAM"}'), RabbitMQ $(mgmt "$MGMT/api/overview" | sed -n 's/.*"rabbitmq_version":"\([^"]*\)".*/\1/p'), $(redis-cli -u "$REDIS_URL" INFO server | tr -d '\r' | grep redis_version), RUST_LOG=$RUST_LOG, products ${PRODUCTS:-1}, git $(git rev-parse --short HEAD 2>/dev/null || echo "(not a checkout)")"
out ""

for config in $CONFIGS; do
BACKEND=${config%%:*}
INSTANCES=${config#*:}
saturation=""
if [ "$CONFIGS" != "sqlite:1" ]; then
  out ""
  out "## $BACKEND, $INSTANCES instance(s) of each service$( [ "$BACKEND" = postgres ] && echo ", DATABASE_POOL_SIZE ${PG_POOL_SIZE:-$(( 60 / (3 * INSTANCES) ))} per instance")"
  out ""
fi
for scenario in $SCENARIOS; do
  case $scenario in
    saturation)
      for r in $(seq 1 "$REPEAT"); do
        start_system sat
        loadgen --concurrency "$CONCURRENCY" --duration "$DURATION" --title "saturation run $r: closed loop, $CONCURRENCY clients, ${DURATION} s" \
          > "$WORK/sat.txt"
        cat "$WORK/sat.txt"
        saturation+="$(sed -n 's/^| sustained.*| \*\*\([0-9.]*\) orders\/s\*\*.*/\1/p' "$WORK/sat.txt") "
        stop_system
      done
      ;;
    ceiling)
      best=$(echo "$saturation" | tr ' ' '\n' | sort -g | tail -1)
      for r in $(seq 1 "$REPEAT"); do
        new_vhost ceiling
        "$BIN/loadgen" ceiling --amqp-url "$AMQP_BASE/$vhost" --duration "$DURATION" ${CEILING_ARGS:-} \
          ${best:+--orders-per-sec "$best"} | tee -a "$BENCH_OUT"
        drop_vhost
      done
      ;;
    rates)
      for rate in $RATES; do
        for r in $(seq 1 "$REPEAT"); do
          start_system "rate$rate"
          loadgen --rate "$rate" --duration "$DURATION" --title "open loop run $r: $rate orders/s offered, ${DURATION} s"
          dump_metrics
          stop_system
        done
      done
      ;;
    overload)
      best=$(echo "$saturation" | tr ' ' '\n' | sort -g | tail -1)
      rate=${OVERLOAD_RATE:-$(awk -v b="${best:-850}" 'BEGIN{printf "%d", 2 * b}')}
      for r in $(seq 1 "$REPEAT"); do
        start_system overload
        loadgen --rate "$rate" --duration "${OVERLOAD_SECS:-60}" --drain "${OVERLOAD_DRAIN:-60}" \
          --title "overload run $r: $rate orders/s offered (twice the sustainable rate) for ${OVERLOAD_SECS:-60} s"
        curl -fsS "http://127.0.0.1:$(port gateway)/metrics" 2>/dev/null \
          | grep -E '^gateway_(orders_refused_total|admission_open)' | sed 's/^/gateway /' | tee -a "$BENCH_OUT" || true
        dump_metrics
        stop_system
      done
      ;;
    soak)
      SERVICE_ENV="${SERVICE_ENV:-} INBOX_RETENTION_SECS=$SOAK_RETENTION_SECS WEBHOOK_HISTORY_RETENTION_SECS=$SOAK_RETENTION_SECS" \
        start_system soak
      sample_sqlite_memory 60 &
      sampler=$!
      sample_tables 60 &
      tables=$!
      loadgen --rate "$SOAK_RATE" --duration "$SOAK_SECS" --mem-every 60 --title "soak: $SOAK_RATE orders/s for $SOAK_SECS s, inbox and delivery history kept $SOAK_RETENTION_SECS s"
      kill "$sampler" "$tables" 2>/dev/null || true
      dump_metrics
      stop_system
      ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
done
done
log "tables written to $BENCH_OUT"
