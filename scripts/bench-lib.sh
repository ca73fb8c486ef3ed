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

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
