#!/usr/bin/env bash
# realtime-stack on this machine with no AWS account: LocalStack started (installed on
# first use), the example stack's hosted zone created in it as a user would already
# have one, then `realtime-stack up` (or `destroy`) through the real code path.
#
#   scripts/demo.sh up        build the example stack.yaml against LocalStack
#   scripts/demo.sh destroy   remove it again
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command=${1:-up}
case $command in
  up | destroy) ;;
  *) echo "usage: $0 up|destroy" >&2; exit 2 ;;
esac

endpoint=$(scripts/localstack.sh start)
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

zone=$(sed -n 's/^ *hosted_zone: *\([^ #]*\).*/\1/p' stack.yaml)
# LocalStack's own virtualenv has boto3; the zone is the one thing a user brings.
"${LOCALSTACK_HOME:-$repo/.localstack}/venv/bin/python" - "$zone" <<'PY'
import sys, boto3
zone = sys.argv[1].rstrip(".")
route53 = boto3.client("route53")
zones = route53.list_hosted_zones_by_name(DNSName=zone)["HostedZones"]
if not any(z["Name"].rstrip(".") == zone for z in zones):
    route53.create_hosted_zone(Name=zone, CallerReference=f"realtime-stack-demo-{zone}")
    print(f"demo: created hosted zone {zone} in LocalStack", file=sys.stderr)
PY

exec cargo run --quiet -- "$command" --yes
