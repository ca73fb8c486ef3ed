#!/bin/sh
# The stand-in for systemctl when an instance is booted on this machine
# (`realtime-stack up --local` and the instance-boot tests, through RTS_SYSTEMCTL).
# The systemd units the user-data and the boot program write are not used as such: this
# machine has no systemd for us to drive, and their sandboxing (DynamicUser,
# ProtectSystem...) needs root. What it keeps of them is what the tests look at: the
# boot program runs detached with its output on the instance's console, and the
# installed chat-server runs detached with the environment file's variables.
# And what stopping an instance relies on, as systemd does it:
# - a unit runs in a session, and so a process group, of its own, as a systemd unit in its
#   cgroup; stopping it signals the whole group (KillMode=control-group), SIGTERM then
#   SIGCONT, so that what the unit started goes too: the boot program's download, and
#   its `systemctl restart chat-server.service` in flight, which would otherwise start
#   the server after the stop;
# - one job at a time, as systemd's job queue (a lock): a stop waits for a start in
#   flight to have recorded its pid, and the other way round.
#
#   local-service-manager.sh daemon-reload|enable UNIT   accepted, nothing to do
#   local-service-manager.sh start|restart UNIT          (re)start it
#   local-service-manager.sh stop [UNIT]                 stop it (every unit when none is
#                                                        named, the boot service first):
#                                                        TERM, then as systemd does with
#                                                        RTS_STOP_TIMEOUT set, KILL after
#                                                        that many seconds; without it
#                                                        TERM again after 2 s, which ends
#                                                        the server's drain early
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
# Pids go to $RTS_ROOT/run/<unit>.pid (a unit's main process, whose pid is also its process
# group's), the lock to $RTS_ROOT/run/service-manager.lock, the server's log to
# $RTS_ROOT/var/log/chat-server.log. Needs flock and setsid (util-linux).
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

# "<state> <process group>" of each /proc/<pid>/stat line in files $@ (or standard input):
# pid (name) state ppid pgrp..., where the name may hold spaces and parentheses. Read from
# /proc: ps is not on a minimal Debian.
state_and_group() {
  sed -n 's/^.*) \([A-Za-z]\) [0-9-]* \([0-9]*\) .*/\1 \2/p' "$@"
}

# The process group of process $1, if it exists.
group_of() {
  state_and_group "/proc/$1/stat" 2>/dev/null | cut -d' ' -f2
}

# Whether a process of group $1 is alive: one that has exited but is not reaped yet
# (a zombie) does not count.
group_alive() {
  # Processes exit while cat reads: it goes on with the others.
  cat /proc/[0-9]*/stat 2>/dev/null | state_and_group |
    awk -v group="$1" '$1 != "Z" && $2 == group { alive = 1 } END { exit !alive }'
}

# Sends signal $1 to every process of the unit whose main process is $2: its process
# group. SIGCONT after it, as systemd does, so that a stopped process gets it too.
signal() {
  kill -"$1" "-$2" 2>/dev/null || true
  [ "$1" = KILL ] || kill -CONT "-$2" 2>/dev/null || true
}

# Waits up to $2 seconds for every process of group $1 to exit; fails if one is left.
gone_within() {
  tries=$(($2 * 10))
  while group_alive "$1"; do
    [ "$tries" -gt 0 ] || return 1
    tries=$((tries - 1))
    sleep 0.1
  done
}

stop() {
  unit=$1
  if ! pid=$(running_pid "$unit"); then
    rm -f "$(pid_file "$unit")"
    return 0
  fi
  log "stopping $unit (pid $pid)"
  signal TERM "$pid"
  if [ -n "${RTS_STOP_TIMEOUT:-}" ]; then
    # As systemd: SIGTERM starts the server's drain, which it is given in full.
    if ! gone_within "$pid" "$RTS_STOP_TIMEOUT"; then
      log "$unit (pid $pid) still runs after ${RTS_STOP_TIMEOUT}s; killing it"
      signal KILL "$pid"
      gone_within "$pid" 5 || true
    fi
  # A second SIGTERM ends the drain early (clients get 1012): nobody waits for a load
  # balancer to deregister the instance.
  elif ! gone_within "$pid" 2; then
    signal TERM "$pid"
    if ! gone_within "$pid" 10; then
      log "$unit (pid $pid) ignored SIGTERM; killing it"
      signal KILL "$pid"
      gone_within "$pid" 5 || true
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
  # Detached, in a session of its own: a service outlives whoever started it, and all it
  # starts is in its process group. Without the lock's descriptor: a unit that asks for
  # a job (the boot program's systemctl) would wait for itself.
  setsid "$binary" >>"$output" 2>&1 </dev/null 9>&- &
  pid=$!
  # Until the background shell has exec'd setsid, that pid's command line is the shell's,
  # and until setsid has made it a group's leader, it is in ours: return only once the
  # pid file names the program and its group.
  tries=50
  until ours "$pid" "$binary" && [ "$(group_of "$pid")" = "$pid" ]; do
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

# Holds the lock until this script exits (fd 9). Without a timeout: a job holds it only
# for its own bounded waits (a start's 5 s, a stop's between its signals).
lock() {
  mkdir -p "$root/run"
  exec 9>>"$root/run/service-manager.lock"
  flock 9
}

case ${1:-} in
  daemon-reload | enable) ;;
  start | restart)
    unit=${2:?$1 needs a unit}
    lock
    stop "$unit"
    start "$unit"
    ;;
  stop)
    # Nothing was ever started here.
    [ -d "$root/run" ] || exit 0
    lock
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
