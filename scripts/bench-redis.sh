#!/usr/bin/env bash
# Redis alone, loopback only: the append script the chat servers call for each message
# (EVALSHA, publishing on the room's channel), driven by chat-bench's `redis` phase
# against one redis-server or a Redis Cluster of several primaries (no replicas), each
# redis-server pinned with taskset, and the load generator pinned apart from them. It
# prints, per primary, its share of the messages, its CPU per message and the projected
# saturation with a core per primary. Bounded: about half a minute. Not a test.
#
# Usage: scripts/bench-redis.sh [--shards N] [--redis-cpus LIST] [--bench-cpus LIST]
#                               [chat-bench flags, e.g. --redis-rooms 1000]
#   --shards N         primaries: 1 (default) is one redis-server, more a Redis Cluster
#   --redis-cpus LIST  CPUs the redis-servers are pinned to, in turn (default 1: all on CPU 1)
#   --bench-cpus LIST  CPUs chat-bench is pinned to (default 0)
set -euo pipefail
cd "$(dirname "$0")/.."

shards=1
redis_cpus=1
bench_cpus=0
bench_flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --shards) shards=$2; shift 2 ;;
    --redis-cpus) redis_cpus=$2; shift 2 ;;
    --bench-cpus) bench_cpus=$2; shift 2 ;;
    *) bench_flags+=("$1"); shift ;;
  esac
done

for program in redis-server redis-cli taskset; do
  command -v "$program" >/dev/null || {
    echo "$program not found: apt-get install -y redis-server redis-tools util-linux" >&2
    exit 1
  }
done

cargo build --release -p chat-server --bin chat-bench
bin="${CARGO_TARGET_DIR:-target}/release"

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

IFS=, read -r -a cpus <<<"$redis_cpus"
ports=()
for i in $(seq 0 $((shards - 1))); do
  port="$(free_port)"
  dir="$work/node-$port"
  mkdir -p "$dir"
  cluster=()
  if [ "$shards" -gt 1 ]; then
    cluster=(--cluster-enabled yes --cluster-port "$(free_port)" --cluster-config-file "$dir/nodes.conf")
  fi
  cpu=${cpus[$((i % ${#cpus[@]}))]}
  taskset -c "$cpu" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" "${cluster[@]}" &
  pids+=($!)
  wait_for_redis "$dir/redis.log"
  ports+=("$port")
  echo "redis-server 127.0.0.1:$port (pid $!) on CPU $cpu"
done

if [ "$shards" -gt 1 ]; then
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" \
    --cluster-replicas 0 --cluster-yes >"$work/create.log"
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do
      redis-cli -p "$port" CLUSTER INFO | grep -q "cluster_state:ok" && break
      sleep 0.1
    done
  done
  flags=(--redis-cluster)
else
  flags=()
fi

echo "chat-bench on CPU $bench_cpus; $(nproc) CPUs"
taskset -c "$bench_cpus" "$bin/chat-bench" --phases redis \
  --redis-url "redis://127.0.0.1:${ports[0]}" "${flags[@]}" "${bench_flags[@]}"
