#!/usr/bin/env bash
# Our gateway beside its peers, in one run: the same loads against our gateway (memory
# engine), a fastwebsockets server and a tokio-tungstenite server (both in bench/src/bin),
# a server on our ringio io_uring completion loop (bench/src/bin/peer_ringio),
# and Node's `ws` (bench/peers/node) when node and npm are here; then the full persisted
# path (scripts/demo.sh) at rising offered load; then the report (tables, ratios, knee,
# plots) from bench's `compare_report`.
#
# Every server runs alone on CPU 0 (`taskset`, one thread or core), the load tester on
# CPU 1, each load on a freshly started server so CPU and memory readings are its own.
#
# Settings (environment): PARTS ("peers fullpath"), SERVERS ("gateway gateway_monoio
# gateway_epoll fastwebsockets tungstenite ringio node"; gateway is ours on its default
# completion driver, gateway_monoio and gateway_epoll with --io-driver io-uring and epoll),
# DURATION (15s per load), ROUNDS (1: how many times every load runs on every server, round
# after round; with more than one the report gives each figure's median, since one run on a
# shared host can be far off), FULLPATH_RATES (messages per user per second, rising),
# FULLPATH_DURATION (20s), PORT (8080), OUT (target/compare/<date>).
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-peers fullpath}
SERVERS=${SERVERS:-gateway gateway_monoio gateway_epoll fastwebsockets tungstenite ringio node}
DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-1}
FULLPATH_RATES=${FULLPATH_RATES:-0.001 0.002 0.005 0.01 0.02 0.05 0.1}
FULLPATH_DURATION=${FULLPATH_DURATION:-20s}
PORT=${PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9090}
OUT=${OUT:-target/compare/$(date -u +%Y-%m-%dT%H%M%SZ)}

# The loads: name, connections, then the scenario's arguments for our gateway and for a
# raw peer. Equal offered load on both sides: echo is our ping frame and its pong against
# an opaque 64-byte payload echoed back; broadcast is groups of 100, each with its first
# member sending (a group chat on ours; `?group=` on the peers). A raw side of `-` marks a
# load only ours runs: chat-10k is the memory engine's own path (issue #15's latency target:
# 10,000 connections in groups of 10, 2,000 messages/s, 18,000 deliveries/s), which the
# peers have no counterpart for.
LOADS=(
  "echo-1k|1000|echo -r 10|echo --raw-echo -r 10"
  "echo-10k|10000|echo -r 1|echo --raw-echo -r 1"
  "echo-max-1k|1000|echo --closed-loop|echo --raw-echo --closed-loop"
  "broadcast-1k|1000|broadcast -g 100 -r 20 --no-delivered-acks --read-ack-interval 0|broadcast --raw -g 100 --senders 1 -r 20"
  "idle-10k|10000|idle --ping-interval 10s|idle --raw --ping-interval 10s"
  "chat-10k|10000|chat -g 10 -r 0.2 --no-delivered-acks --read-ack-interval 0|-"
)

scripts/toolchain.sh
command -v cargo >/dev/null || . "$HOME/.cargo/env"
echo "compare: building in release (the first build takes a few minutes)"
cargo build --release --locked -p gateway -p loadtest -p bench --bins

have_node() { command -v node >/dev/null && command -v npm >/dev/null; }
if [[ " $SERVERS " == *" node "* ]]; then
  if have_node; then
    npm ci --prefix bench/peers/node --no-audit --no-fund --loglevel=error
  else
    echo "compare: node or npm is missing; Node's ws is left out" >&2
    SERVERS=${SERVERS/node/}
  fi
fi

ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
export GATEWAY_JWT_SECRET="compare-$(date +%s)-$RANDOM$RANDOM"

{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel=$(uname -r)"
  echo "cpus=$(nproc)"
  echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "memory_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
  echo "rustc=$(rustc --version)"
  have_node && echo "node=$(node --version)"
  echo "duration=$DURATION"
  echo "rounds=$ROUNDS"
  echo "fullpath_duration=$FULLPATH_DURATION"
} >"$OUT/machine.env"

server_pid=
stop_server() {
  if [[ -n $server_pid ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# Starts one server on CPU 0 in the given mode and waits until its port accepts.
start_server() {
  local server=$1 mode=$2 log=$3
  local listen="127.0.0.1:$PORT"
  case $server in
    gateway | gateway_monoio | gateway_epoll)
      local driver=completion
      [[ $server == gateway_monoio ]] && driver=io-uring
      [[ $server == gateway_epoll ]] && driver=epoll
      # The per-session frame budget is a policy, not a cost: lifted so closed-loop echo
      # is not throttled (the token bucket is still charged for every frame).
      taskset -c 0 target/release/gateway --listen "$listen" --admin-listen "127.0.0.1:$ADMIN_PORT" \
        --cores 1 --engine memory --io-driver "$driver" --frames-per-second 1000000 \
        --frame-burst 1000000 >"$log" 2>&1 &
      ;;
    fastwebsockets | tungstenite | ringio)
      taskset -c 0 "target/release/peer_$server" --listen "$listen" --mode "$mode" --threads 1 >"$log" 2>&1 &
      ;;
    node)
      taskset -c 0 node bench/peers/node/server.js --listen "$listen" --mode "$mode" >"$log" 2>&1 &
      ;;
    *)
      echo "compare: unknown server $server" >&2
      exit 1
      ;;
  esac
  server_pid=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "compare: $server exited; its log:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "compare: $server does not accept on $listen" >&2
  exit 1
}

if [[ " $PARTS " == *" peers "* ]]; then
  for round in $(seq 1 "$ROUNDS"); do
    # One round: plain file names; several: each run's files end in .r<round>.
    suffix=
    ((ROUNDS > 1)) && suffix=".r$round"
    for load in "${LOADS[@]}"; do
      IFS='|' read -r name connections ours raw <<<"$load"
      for server in $SERVERS; do
        [[ $raw == - && $server != gateway* ]] && continue
        mode=echo
        [[ $name == broadcast* ]] && mode=broadcast
        args=$raw
        [[ $server == gateway* ]] && args=$ours
        run="$OUT/peer-$server-$name$suffix"
        echo "compare: $name on $server${suffix:+, round $round of $ROUNDS}"
        start_server "$server" "$mode" "$run.log"
        # shellcheck disable=SC2086 # the scenario's arguments are words
        target/release/loadtest --url "ws://127.0.0.1:$PORT/ws" -n "$connections" -d "$DURATION" \
          --threads 1 --cpus 1 --pid "$server_pid" --quiet --json "$run.json" \
          $args >"$run.txt" || echo "compare: the load tester failed on $server $name" >&2
        stop_server
        # Let the previous run's sockets leave TIME_WAIT behind before the next one.
        sleep 2
      done
    done
  done
fi

if [[ " $PARTS " == *" fullpath "* ]]; then
  echo "compare: the full path at rising load: $FULLPATH_RATES msg/s per user"
  RATES="$FULLPATH_RATES" DURATION="$FULLPATH_DURATION" OUT="$OUT/fullpath" \
    GATEWAY_PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" scripts/demo.sh
fi

target/release/compare_report "$OUT" | tee "$OUT/report.md"
echo "compare: report in $OUT/report.md, plots in $OUT/*.svg"
