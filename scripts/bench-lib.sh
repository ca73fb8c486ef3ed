# Shared by the benchmark scripts (sourced, not run): a scratch directory and the pids of
# what the script starts, all removed and stopped on exit, and free loopback ports.
# shellcheck shell=bash

work="$(mktemp -d)"
pids=()
cleanup() {
  local status=$?
  # A benchmark that failed says what its servers said last (one may have exited).
  if ((status != 0)); then
    for log in "$work"/*.log; do
      [[ -f $log ]] || continue
      echo "--- the end of ${log##*/}:" >&2
      tail -n 20 "$log" >&2
    done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A port below the ephemeral range: one inside it may be the local end of a client
# connection (a previous run's, in TIME_WAIT), which a listener cannot bind although
# nothing listens there.
free_port() {
  local ephemeral port
  read -r ephemeral _ </proc/sys/net/ipv4/ip_local_port_range
  ((ephemeral > 11000)) || ephemeral=32768
  while :; do
    port=$((10000 + RANDOM % (ephemeral - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# Waits until the redis-server logging to $1 accepts connections; fails if it does not.
wait_for_redis() {
  for _ in $(seq 100); do
    grep -q "Ready to accept" "$1" 2>/dev/null && return
    sleep 0.1
  done
  echo "redis-server did not start (log: $1)" >&2
  exit 1
}
