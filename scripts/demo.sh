#!/usr/bin/env bash
# realtime-stack on this machine with no AWS account: `realtime-stack up --local` starts
# LocalStack (installed on first use), creates the example stack's hosted zone in it as a
# user would already have one, runs `up` through the real code path, boots each instance
# here from its own user-data (a local TLS redis-server standing for ElastiCache) and
# prints one http://127.0.0.1:<port>/ URL per instance: open two, and chat across them.
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

scripts/prerequisites.sh demo

# The same target directory as scripts/test.sh, so that one command reuses the other's build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/target}
started=$SECONDS
log "building realtime-stack into $CARGO_TARGET_DIR (the first build takes several minutes; cargo's progress follows)"
cargo build --locked --bin realtime-stack
log "built in $((SECONDS - started)) s"

exec "$CARGO_TARGET_DIR/debug/realtime-stack" "$command" --local
