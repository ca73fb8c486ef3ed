#!/bin/sh
# The stand-in for systemctl when an instance is booted on this machine
# (`realtime-stack up --local` and the instance-boot tests, through RTS_SYSTEMCTL).
# The systemd unit the user-data writes is not used here: this machine has no systemd
# for us to drive, and its sandboxing (DynamicUser, ProtectSystem...) needs root. What
# it keeps from the unit is what matters for the test: the installed binary, started
# detached with the environment file's variables, restarted on `restart`.
#
#   local-service-manager.sh daemon-reload|enable   accepted, nothing to do
#   local-service-manager.sh restart [unit]         stop the running server, start it again
#   local-service-manager.sh stop [unit]            stop it (TERM, then TERM again to end
#                                                   the drain, then KILL)
#
# Environment:
#   RTS_ROOT                    the instance's install prefix (as for the user-data)
#   RTS_LOCAL_LISTEN            where the server listens instead of CHAT_LISTEN: the local
#                               "instances" share one network, so each gets its own port
#   RTS_LOCAL_REDIS_CA_FILE     optional: the local redis-server's test CA (REDIS_CA_FILE)
# The pid goes to $RTS_ROOT/run/chat-server.pid, the log to $RTS_ROOT/var/log/chat-server.log.
set -eu

root=${RTS_ROOT:?RTS_ROOT must name the instance sandbox (realtime-stack sets it)}
binary=$root/opt/realtime-stack/chat-server
env_file=$root/etc/realtime-stack/chat-server.env
pid_file=$root/run/chat-server.pid
log_file=$root/var/log/chat-server.log

log() { echo "local-service-manager: $*" >&2; }

# Whether process $1 is our chat-server: a pid can be reused, and an exited process
# nobody has reaped yet still answers kill -0 (its command line is empty).
ours() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/cmdline" ] || return 0
  tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$binary"
}

# The recorded pid, if that process is still our chat-server.
running_pid() {
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && ours "$pid" || return 1
  echo "$pid"
}

# Waits up to $2 seconds for process $1 to exit; fails if it is still there.
gone_within() {
  tries=$(($2 * 10))
  while ours "$1"; do
    [ "$tries" -gt 0 ] || return 1
    tries=$((tries - 1))
    sleep 0.1
  done
}

stop() {
  if ! pid=$(running_pid); then
    rm -f "$pid_file"
    return 0
  fi
  log "stopping chat-server (pid $pid)"
  # SIGTERM starts the server's drain; a second one ends it early (clients get 1012):
  # locally nobody waits for a load balancer to deregister the instance.
  kill -TERM "$pid" 2>/dev/null || true
  if ! gone_within "$pid" 2; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! gone_within "$pid" 10; then
      log "chat-server (pid $pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      gone_within "$pid" 5 || true
    fi
  fi
  rm -f "$pid_file"
}

start() {
  listen=${RTS_LOCAL_LISTEN:?RTS_LOCAL_LISTEN must give the local listen address (realtime-stack sets it)}
  [ -x "$binary" ] || { log "$binary is not installed: the user-data must install it first"; exit 1; }
  [ -f "$env_file" ] || { log "$env_file is missing: the user-data must write it first"; exit 1; }
  mkdir -p "$root/run" "$root/var/log"
  # Like systemd's EnvironmentFile: KEY=VALUE lines, exported as they are, never
  # evaluated by the shell.
  while IFS= read -r line; do
    case $line in
      '' | '#'*) ;;
      *=*) export "${line?}" ;;
    esac
  done <"$env_file"
  export CHAT_LISTEN="$listen" NO_COLOR=1
  if [ -n "${RTS_LOCAL_REDIS_CA_FILE:-}" ]; then
    export REDIS_CA_FILE="$RTS_LOCAL_REDIS_CA_FILE"
  fi
  log "starting chat-server on $listen (log: $log_file)"
  # Detached: it must outlive `realtime-stack up --local`, as a service outlives the boot.
  nohup "$binary" >>"$log_file" 2>&1 </dev/null &
  pid=$!
  # Until the background shell has exec'd the binary, that pid's command line is the
  # shell's: return only once it is the server, so the pid file names a running server.
  tries=50
  until ours "$pid"; do
    if [ "$tries" -le 0 ]; then
      log "chat-server did not start; its log ($log_file):"
      tail -n 20 "$log_file" >&2 || true
      exit 1
    fi
    tries=$((tries - 1))
    sleep 0.1
  done
  echo "$pid" >"$pid_file"
}

case ${1:-} in
  daemon-reload | enable) ;;
  restart)
    stop
    start
    ;;
  stop) stop ;;
  *)
    echo "usage: $0 daemon-reload|enable|restart|stop [chat-server.service]" >&2
    exit 2
    ;;
esac
