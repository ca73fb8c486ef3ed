#!/usr/bin/env bash
# realtime-stack on this machine with no AWS account: `realtime-stack up --local` starts
# LocalStack (installed on first use), creates the example stack's hosted zone in it as a
# user would already have one, runs `up` through the real code path, boots each instance
# here from its own user-data (a local TLS redis-server standing for ElastiCache) behind
# a local stand-in for the load balancer, and prints its one http://127.0.0.1:<port>/
# URL: open it in two windows, and the chat crosses instances through Redis.
#
#   scripts/demo.sh up        build the example stack.yaml and boot its instances here
#   scripts/demo.sh destroy   stop them and remove the stack again
#
# First run on a fresh machine: Debian packages (scripts/prerequisites.sh), the CLI's
# debug build, LocalStack's install and the chat-server's release build; the README says
# how long that took here.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command=${1:-up}
case $command in
  up | destroy) ;;
  *) echo "usage: $0 up|destroy" >&2; exit 2 ;;
esac

log() { printf 'demo: %s\n' "$*" >&2; }

# Waits for the background LocalStack start, saying every 10 s what it is doing.
wait_for_localstack() {
  local job=$1 output=$2
  while kill -0 "$job" 2>/dev/null; do
    log "LocalStack: $(tail -n 1 "$output")"
    sleep 10
  done
  wait "$job"
}

scripts/prerequisites.sh demo

# The same target directory as scripts/test.sh, so that one command reuses the other's build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/target}
if [[ $command == up ]]; then
  # LocalStack installs (the first time: minutes of download) while the CLI builds;
  # `up --local` then finds it running.
  localstack_log=$(mktemp)
  scripts/localstack.sh start >/dev/null 2>"$localstack_log" &
  localstack_job=$!
fi
started=$SECONDS
log "building realtime-stack into $CARGO_TARGET_DIR (the first build takes several minutes; cargo's progress follows)"
cargo build --locked --bin realtime-stack
log "built in $((SECONDS - started)) s"
if [[ $command == up ]]; then
  if ! wait_for_localstack "$localstack_job" "$localstack_log"; then
    log "LocalStack did not start; what scripts/localstack.sh said:"
    cat "$localstack_log" >&2
    exit 1
  fi
fi

exec "$CARGO_TARGET_DIR/debug/realtime-stack" "$command" --local
