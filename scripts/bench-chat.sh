#!/usr/bin/env bash
# Benchmark of the chat server on this machine, loopback only: builds in release,
# starts one redis-server and two chat-server instances, runs chat-bench (saturation
# throughput, latency at a fixed rate, CPU per 100k deliveries, memory per idle
# connection), then stops everything. Bounded: about 1-2 minutes. Not a test.
#
# Usage: scripts/bench-chat.sh [extra chat-bench flags, e.g. --idle 5000]
# CHAT_SERVER=<path> runs that chat-server binary instead of this tree's (to compare a
# build before and after a change with the same load generator); CHAT_SERVER_FLAGS adds
# flags to both servers (others than those set below), SEND_QUEUE sets their
# --send-queue (default 4096).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || {
  echo "redis-server not found: apt-get install -y redis-server" >&2
  exit 1
}

cargo build --release -p chat-server --bins
bin="${CARGO_TARGET_DIR:-target}/release"

# 10 000 client sockets in chat-bench, 5 000 in each server: raise the per-process limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 20000 ]; then
  echo "ulimit -n is $(ulimit -n); the rooms and idle phases need 20000" >&2
  exit 1
fi

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

redis_port="$(free_port)"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
wait_for_redis "$work/redis.log"

addrs=()
server_pids=()
# A server from before --room-joins-per-minute (CHAT_SERVER=...) has no such budget.
server="${CHAT_SERVER:-$bin/chat-server}"
join_budget=()
if "$server" --help | grep -q -- --room-joins-per-minute; then
  join_budget=(--room-joins-per-minute 1000000)
fi
read -r -a extra_flags <<<"${CHAT_SERVER_FLAGS:-}"
# Every benchmark connection comes from loopback: the limits per client address (and on
# new rooms) would refuse them, so they are lifted with the rate limits.
for id in bench-a bench-b; do
  RUST_LOG=warn,chat_server=info NO_COLOR=1 "$server" \
    --listen 127.0.0.1:0 --redis-url "redis://127.0.0.1:$redis_port" --instance-id "$id" \
    --rate-per-sec 1000000 --rate-burst 1000000 --send-queue "${SEND_QUEUE:-4096}" --drain-secs 0 \
    --max-connections-per-address 1000000 --new-rooms-per-minute 1000000 \
    "${join_budget[@]}" "${extra_flags[@]}" 2>"$work/$id.log" &
  pids+=($!)
  server_pids+=($!)
  for _ in $(seq 100); do
    # The background shell may not have opened the log yet: under `set -e` a failed read
    # would end the benchmark.
    addr="$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$work/$id.log" 2>/dev/null)" || true
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$id.log" >&2; exit 1; }
  addrs+=("$addr")
done

echo "redis-server 127.0.0.1:$redis_port; chat-server ${addrs[*]} (pids ${server_pids[*]}); $(nproc) CPUs"
"$bin/chat-bench" \
  --servers "$(IFS=,; echo "${addrs[*]}")" \
  --pids "$(IFS=,; echo "${server_pids[*]}")" \
  --redis-pids "$redis_pid" \
  "$@"
