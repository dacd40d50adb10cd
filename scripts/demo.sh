#!/usr/bin/env bash
# The main job: the full stack (backend and gateway on RabbitMQ, PostgreSQL and Redis) under
# the load tester's chat scenario, then the latency report. Installs and starts what is
# missing, builds in release, and stops what it started, also on Ctrl-C.
#
# Every run also prints the CPU each process used over the load tester's run phase (not
# startup, connecting or setup): gateway, backend, RabbitMQ (the broker listening on 5672,
# its port programs and epmd), PostgreSQL (the server on 5432 and every backend process,
# those that start or end during the run included), Redis (on 6379) and the load tester,
# as CPU seconds, cores used and CPU seconds per 1,000 user messages sent, with the host's
# total beside them (bench's `cpu_report`, sampling /proc every 250 ms; seeing the
# services' processes needs root). The table goes to $OUT/cpu*.md and $OUT/cpu*.json, the
# raw samples to $OUT/cpu*-samples.tsv.
#
# Settings (environment): CONNECTIONS (10000), DURATION (30s), GROUP (10), RATE (0.02: one
# message per user every 50 s, with delivered and read acks), RATES (several rates, one run
# each on the same stack, e.g. "0.01 0.02 0.05"), BODY (64 bytes), GATEWAY_CORES (1), SHARDS
# (2: inbound shards and backend transactions at once; bench/RESULTS.md measures 2 against 8),
# LOADTEST_THREADS (1), GATEWAY_PORT (8080), ADMIN_PORT (9090), CHAT_FLAGS (more flags for
# the chat scenario, e.g. "--no-delivered-acks --read-ack-interval 0"), OUT (target/demo:
# where reports, plots and logs go), BIN_DIR (a directory holding prebuilt gateway, backend
# and loadtest binaries to run instead of building them, e.g. an older build to compare
# with), CPU (1; 0 leaves the CPU table out).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-10000}
DURATION=${DURATION:-30s}
GROUP=${GROUP:-10}
RATE=${RATE:-0.02}
RATES=${RATES:-$RATE}
BODY=${BODY:-64}
GATEWAY_CORES=${GATEWAY_CORES:-1}
SHARDS=${SHARDS:-2}
LOADTEST_THREADS=${LOADTEST_THREADS:-1}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9090}
BIN_DIR=${BIN_DIR:-}
CPU=${CPU:-1}
release=${CARGO_TARGET_DIR:-target}/release

scripts/toolchain.sh
# A toolchain that rustup just installed is not on PATH yet.
command -v cargo >/dev/null || . "$HOME/.cargo/env"
scripts/services.sh

if [[ -n $BIN_DIR ]]; then
  bin=$BIN_DIR
  for b in gateway backend loadtest; do
    [[ -x $bin/$b ]] || { echo "demo: $bin/$b is missing" >&2; exit 1; }
  done
  echo "demo: running the binaries in $bin"
else
  bin=$release
  echo "demo: building in release (the first build takes a few minutes)"
  cargo build --release --locked -p gateway -p backend -p loadtest
fi
# The CPU table's tool comes from this tree, whatever BIN_DIR holds.
[[ $CPU == 0 ]] || cargo build --release --locked -p bench --bin cpu_report

# Every socket is a descriptor, on both ends of the loopback.
ulimit -n "$(ulimit -Hn)"

out=${OUT:-target/demo}
mkdir -p "$out"
# A fresh corner of the services for this run (schema, queues, keys), removed at the end.
export GATEWAY_JWT_SECRET="demo-secret-$(date +%s)-$RANDOM$RANDOM"
prefix="demo_$(date +%s)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $prefix CASCADE" >/dev/null 2>&1 || true
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." | while read -r queue; do
      rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1 || true
    done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin/backend" --database-url postgres://postgres@127.0.0.1:5432/test --pg-schema "$prefix" \
  --amqp-prefix "$prefix" --redis-prefix "$prefix" --shards "$SHARDS" >"$out/backend.log" 2>&1 &
backend_pid=$!
pids+=("$backend_pid")
"$bin/gateway" --listen "127.0.0.1:$GATEWAY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --cores "$GATEWAY_CORES" --engine amqp --amqp-prefix "$prefix" --redis-prefix "$prefix" \
  --shards "$SHARDS" >"$out/gateway.log" 2>&1 &
gateway_pid=$!
pids+=("$gateway_pid")

echo "demo: waiting for the gateway to reach the broker"
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$gateway_pid" 2>/dev/null; then
    echo "demo: the gateway exited; its log:" >&2
    cat "$out/gateway.log" >&2
    exit 1
  fi
  sleep 0.2
done

first_user=1
for rate in $RATES; do
  # One rate keeps the plain names; several are told apart by their rate.
  name=report
  [[ $RATES == "$RATE" ]] || name="report-$rate"
  echo "demo: $CONNECTIONS connections, groups of $GROUP, $rate msg/s each, $BODY-byte bodies, for $DURATION"
  # The CPU table wraps the load tester: it samples while the tester runs, then cuts the
  # samples to the run phase the tester's report gives.
  cpu=()
  if [[ $CPU != 0 ]]; then
    cpu=("$release/cpu_report" --report "$out/$name.json" --json "$out/${name/report/cpu}.json"
      --markdown "$out/${name/report/cpu}.md" --samples "$out/${name/report/cpu}-samples.tsv"
      --hz "$(getconf CLK_TCK)"
      "gateway=pid:$gateway_pid" "backend=pid:$backend_pid" rabbitmq=port:5672+port:4369
      postgresql=port:5432 redis=port:6379 tester=child --)
  fi
  # shellcheck disable=SC2086 # CHAT_FLAGS holds words
  "${cpu[@]}" "$bin/loadtest" --url "ws://127.0.0.1:$GATEWAY_PORT/ws" -n "$CONNECTIONS" -d "$DURATION" \
    --first-user-id "$first_user" --threads "$LOADTEST_THREADS" --json "$out/$name.json" --plot "$out/${name/report/latency}.svg" \
    chat -g "$GROUP" -r "$rate" -s "$BODY" ${CHAT_FLAGS:-}
  # New users for the next run: the backend is idempotent on (sender, client message id),
  # so a user sending its message 1 again would get the earlier run's message back.
  first_user=$((first_user + CONNECTIONS))
done
echo "demo: reports in $out/report*.json, plots in $out/latency*.svg, logs in $out/"
[[ $CPU == 0 ]] || echo "demo: CPU tables in $out/cpu*.md and $out/cpu*.json"
