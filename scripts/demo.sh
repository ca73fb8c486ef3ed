#!/usr/bin/env bash
# realtime-stack on this machine with no AWS account: `realtime-stack up --local` starts
# LocalStack (installed on first use), creates the example stack's hosted zone in it as a
# user would already have one, runs `up` through the real code path, boots each instance
# here from its own user-data (a local TLS redis-server standing for ElastiCache) and
# prints one http://127.0.0.1:<port>/ URL per instance: open two, and chat across them.
#
#   scripts/demo.sh up        build the example stack.yaml and boot its instances here
#   scripts/demo.sh destroy   stop them and remove the stack again
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command=${1:-up}
case $command in
  up | destroy) ;;
  *) echo "usage: $0 up|destroy" >&2; exit 2 ;;
esac

exec cargo run --quiet -- "$command" --local
