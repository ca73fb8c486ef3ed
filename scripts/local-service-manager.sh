#!/bin/sh
# The stand-in for systemctl when an instance is booted on this machine
# (`realtime-stack up --local` and the instance-boot tests, through RTS_SYSTEMCTL).
# The systemd units the user-data and the boot program write are not used as such: this
# machine has no systemd for us to drive, and their sandboxing (DynamicUser,
# ProtectSystem...) needs root. What it keeps of them is what the tests look at: the
# boot program runs detached with its output on the instance's console, and the
# installed chat-server runs detached with the environment file's variables.
#
#   local-service-manager.sh daemon-reload|enable UNIT   accepted, nothing to do
#   local-service-manager.sh start|restart UNIT          (re)start it
#   local-service-manager.sh stop [UNIT]                 stop it (every unit when none is
#                                                        named): TERM, then as systemd does
#                                                        with RTS_STOP_TIMEOUT set, KILL
#                                                        after that many seconds; without
#                                                        it TERM again after 2 s, which
#                                                        ends the server's drain early
# Units: realtime-stack-boot.service, chat-server.service.
#
# Environment:
#   RTS_ROOT                    the instance's install prefix (as for the user-data)
#   RTS_CONSOLE                 the file standing for the instance's console
#                               (default: console.log beside RTS_ROOT)
#   RTS_LOCAL_LISTEN            where the server listens instead of CHAT_LISTEN: the local
#                               "instances" share one network, so each gets its own port
#   RTS_LOCAL_REDIS_CA_FILE     optional: the local redis-server's test CA (REDIS_CA_FILE)
#   RTS_STOP_TIMEOUT            optional: stop like systemd with this TimeoutStopSec
# Pids go to $RTS_ROOT/run/<unit>.pid, the server's log to $RTS_ROOT/var/log/chat-server.log.
set -eu

root=${RTS_ROOT:?RTS_ROOT must name the instance sandbox (realtime-stack sets it)}
console=${RTS_CONSOLE:-$(dirname "$root")/console.log}
log_file=$root/var/log/chat-server.log
env_file=$root/etc/realtime-stack/chat-server.env

log() { echo "local-service-manager: $*" >&2; }

# The program of a unit.
program() {
  case $1 in
    chat-server.service) echo "$root/opt/realtime-stack/chat-server" ;;
    realtime-stack-boot.service) echo "$root/opt/realtime-stack/boot" ;;
    *)
      log "unknown unit $1"
      exit 2
      ;;
  esac
}

pid_file() { echo "$root/run/${1%.service}.pid"; }

# Whether process $1 runs program $2: a pid can be reused, and an exited process nobody
# has reaped yet still answers kill -0 (its command line is empty).
ours() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/cmdline" ] || return 0
  tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$2"
}

# The recorded pid of unit $1, if that process still runs its program.
running_pid() {
  file=$(pid_file "$1")
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && ours "$pid" "$(program "$1")" || return 1
  echo "$pid"
}

# Waits up to $3 seconds for process $1 (running $2) to exit; fails if it is still there.
gone_within() {
  tries=$(($3 * 10))
  while ours "$1" "$2"; do
    [ "$tries" -gt 0 ] || return 1
    tries=$((tries - 1))
    sleep 0.1
  done
}

stop() {
  unit=$1
  binary=$(program "$unit")
  if ! pid=$(running_pid "$unit"); then
    rm -f "$(pid_file "$unit")"
    return 0
  fi
  log "stopping $unit (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if [ -n "${RTS_STOP_TIMEOUT:-}" ]; then
    # As systemd: SIGTERM starts the server's drain, which it is given in full.
    if ! gone_within "$pid" "$binary" "$RTS_STOP_TIMEOUT"; then
      log "$unit (pid $pid) still runs after ${RTS_STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      gone_within "$pid" "$binary" 5 || true
    fi
  # A second SIGTERM ends the drain early (clients get 1012): nobody waits for a load
  # balancer to deregister the instance.
  elif ! gone_within "$pid" "$binary" 2; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! gone_within "$pid" "$binary" 10; then
      log "$unit (pid $pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      gone_within "$pid" "$binary" 5 || true
    fi
  fi
  rm -f "$(pid_file "$unit")"
}

start() {
  unit=$1
  binary=$(program "$unit")
  [ -x "$binary" ] || { log "$binary is not installed"; exit 1; }
  mkdir -p "$root/run" "$root/var/log"
  case $unit in
    chat-server.service)
      listen=${RTS_LOCAL_LISTEN:?RTS_LOCAL_LISTEN must give the local listen address (realtime-stack sets it)}
      [ -f "$env_file" ] || { log "$env_file is missing: the boot program writes it first"; exit 1; }
      # Like systemd's EnvironmentFile: KEY=VALUE lines, exported as they are, never
      # evaluated by the shell.
      while IFS= read -r line; do
        case $line in
          '' | '#'*) ;;
          *=*) export "${line?}" ;;
        esac
      done <"$env_file"
      # The local load balancer connects from loopback: its X-Forwarded-For is the one
      # to believe, as the ALB's within the VPC on AWS.
      export CHAT_LISTEN="$listen" CHAT_TRUSTED_PROXIES=127.0.0.1/32 NO_COLOR=1
      if [ -n "${RTS_LOCAL_REDIS_CA_FILE:-}" ]; then
        export REDIS_CA_FILE="$RTS_LOCAL_REDIS_CA_FILE"
      fi
      log "starting chat-server on $listen (log: $log_file)"
      output=$log_file
      ;;
    *) output=$console ;;
  esac
  # Detached: a service outlives whoever started it.
  nohup "$binary" >>"$output" 2>&1 </dev/null &
  pid=$!
  # Until the background shell has exec'd the program, that pid's command line is the
  # shell's: return only once it is the program, so the pid file names it.
  tries=50
  until ours "$pid" "$binary"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$unit exited at once; the end of its output ($output):"
      tail -n 20 "$output" >&2 || true
      exit 1
    fi
    if [ "$tries" -le 0 ]; then
      log "$unit did not start"
      exit 1
    fi
    tries=$((tries - 1))
    sleep 0.1
  done
  echo "$pid" >"$(pid_file "$unit")"
}

case ${1:-} in
  daemon-reload | enable) ;;
  start | restart)
    unit=${2:?$1 needs a unit}
    stop "$unit"
    start "$unit"
    ;;
  stop)
    if [ -n "${2:-}" ]; then
      stop "$2"
    else
      stop realtime-stack-boot.service
      stop chat-server.service
    fi
    ;;
  *)
    echo "usage: $0 daemon-reload|enable|start|restart|stop [UNIT]" >&2
    exit 2
    ;;
esac
