#!/usr/bin/env bash
# LocalStack on this machine, without Docker: installed from PyPI into a virtualenv with
# the project's extension (ELBv2, ElastiCache and Auto Scaling served by moto, the Price
# List's GetProducts from a test price list), run in host mode bound to loopback only.
# The virtualenv lives outside the clone, under
# ~/.cache/realtime-stack/localstack/<hash of the pins and the extension>, so a fresh
# clone (CI's) reuses it; a change of either installs a new one beside it.
#
#   scripts/localstack.sh start    install on first use, start, wait until healthy, print the endpoint
#   scripts/localstack.sh stop     stop the LocalStack this script started (and nothing else)
#   scripts/localstack.sh status   print the endpoint and exit 0 when healthy, exit 3 otherwise
#   scripts/localstack.sh logs     print LocalStack's log (logs -f follows it)
#
# Environment: LOCALSTACK_PORT (default 4566), LOCALSTACK_HOME (its pid, log and data;
# default <repo>/.localstack), LOCALSTACK_VENVS (default ~/.cache/realtime-stack/localstack),
# LOCALSTACK_START_TIMEOUT seconds (default 180).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${LOCALSTACK_HOME:-$repo/.localstack}
port=${LOCALSTACK_PORT:-4566}
endpoint="http://127.0.0.1:$port"
venvs=${LOCALSTACK_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/localstack}
pidfile=$home/localstack.pid
logfile=$home/localstack.log
extension=$repo/scripts/localstack-extension

# The newest LocalStack that runs on Python 3.11; the other pins keep its imports and its
# TLS certificate generation working (newer releases of these break them).
requirements=(
  "localstack-core[runtime]==4.13.1"
  "cbor2<5.7"
  "pyopenssl<24.3"
  "cryptography<44"
  "service_identity<24.2"
)

log() { printf 'localstack: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

healthy() {
  curl -fsS --max-time 2 "$endpoint/_localstack/health" 2>/dev/null |
    grep -q '"elbv2": "\(available\|running\)"'
}

our_pid() {
  local pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'localstack.runtime.main' || return 1
  echo "$pid"
}

# Runs a command, saying every 10 s that it still runs: pip is silent for long stretches
# while it unpacks and installs.
with_heartbeat() {
  local started=$SECONDS pid status=0
  "$@" &
  pid=$!
  while ! wait_for_exit "$pid" 10; do log "still installing ($((SECONDS - started)) s)"; done
  wait "$pid" || status=$?
  return "$status"
}

# Whether $1 exits within $2 seconds.
wait_for_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

install_stamp() {
  { printf '%s\n' "${requirements[@]}"; cat "$extension/pyproject.toml" "$extension"/realtime_stack_localstack/*.py; } |
    sha256sum | cut -c1-16
}

# Sets $venv to the virtualenv for the current pins and extension, installing it first
# when it is not complete. Older ones are removed once the new one is in place.
install() {
  local stamp started
  stamp=$(install_stamp)
  venv=$venvs/$stamp
  [[ -f $venv/.installed ]] && return 0
  command -v python3 >/dev/null || die "python3 not found: run scripts/prerequisites.sh demo (apt-get install python3 python3-venv)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "LocalStack needs Python 3.10 or newer; python3 is $(python3 --version)"
  started=$SECONDS
  log "installing LocalStack ${requirements[0]#*==} and the project's extension into $venv"
  log "(first time only: about 3 to 5 minutes; pip's progress follows)"
  rm -rf "$venv"
  mkdir -p "$venvs"
  python3 -m venv "$venv" ||
    die "could not create a virtualenv: run scripts/prerequisites.sh demo (apt-get install python3-venv)"
  with_heartbeat "$venv/bin/pip" install --disable-pip-version-check --progress-bar off "${requirements[@]}" >&2 ||
    die "pip could not install LocalStack (see the messages above)"
  # Not editable: the stamp above makes a new virtualenv whenever its sources change.
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar off --no-deps "$extension" >&2 ||
    die "pip could not install the project's LocalStack extension from $extension"
  touch "$venv/.installed"
  log "installed in $((SECONDS - started)) s"
  local old
  for old in "$venvs"/*/; do
    old=${old%/}
    [[ $old == "$venv" ]] && continue
    # One that a running LocalStack (another clone's) still uses stays.
    grep -qsF "$old/" /proc/[0-9]*/cmdline || rm -rf "$old"
  done
}

start() {
  if our_pid >/dev/null && healthy; then
    log "already running (pid $(our_pid))"
    echo "$endpoint"
    return 0
  fi
  if healthy; then
    log "a LocalStack with the project's extension already answers on $endpoint (not started by this script)"
    echo "$endpoint"
    return 0
  fi
  if curl -s --max-time 2 -o /dev/null "$endpoint" 2>/dev/null; then
    die "something else answers on $endpoint: stop it, or pick another port with LOCALSTACK_PORT"
  fi
  install
  mkdir -p "$home/volume"
  log "starting on $endpoint (log: $logfile); about 10 to 30 seconds"
  # hypercorn binds only the given host; the default gateway server binds every interface.
  # DNS_ADDRESS=0: no DNS server; SKIP_SSL_CERT_DOWNLOAD and DISABLE_EVENTS: no outside calls.
  GATEWAY_SERVER=hypercorn \
    GATEWAY_LISTEN="127.0.0.1:$port" \
    DNS_ADDRESS=0 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 \
    LOCALSTACK_VOLUME_DIR="$home/volume" \
    nohup "$venv/bin/python" -m localstack.runtime.main >"$logfile" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pidfile"
  local started=$SECONDS deadline=$((SECONDS + ${LOCALSTACK_START_TIMEOUT:-180}))
  until healthy; do
    # Whether the child lives, not our_pid: until it has exec'd Python, the child's
    # command line is still this script's.
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logfile" >&2 || true
      die "LocalStack exited during start-up (log above, full log: $logfile)"
    fi
    ((SECONDS < deadline)) || die "LocalStack did not become healthy within ${LOCALSTACK_START_TIMEOUT:-180} s (log: $logfile)"
    sleep 1
    if (((SECONDS - started) % 5 == 0)); then log "still starting ($((SECONDS - started)) s)"; fi
  done
  log "ready in $((SECONDS - started)) s (pid $(<"$pidfile"))"
  echo "$endpoint"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$pidfile"
    log "not running (nothing started by this script)"
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "still running after 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

status() {
  if healthy; then
    if pid=$(our_pid); then log "running (pid $pid)"; else log "running (not started by this script)"; fi
    echo "$endpoint"
  else
    log "not running on $endpoint"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  logs)
    [[ -f $logfile ]] || die "no log yet at $logfile"
    if [[ ${2:-} == -f ]]; then exec tail -n 100 -f "$logfile"; else cat "$logfile"; fi
    ;;
  *) echo "usage: $0 start|stop|status|logs [-f]" >&2; exit 2 ;;
esac
