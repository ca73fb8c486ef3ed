#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints and every test of the
# workspace, against a LocalStack and the system packages it installs when missing.
# Whatever it starts, it stops.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf '\n==> %s\n' "$*" >&2; }

# Debian packages the tests need, by the command that shows each one is there.
declare -A packages=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [openssl]=openssl
  [curl]=curl
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [shellcheck]=shellcheck
)
missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null || missing+=("${packages[$command]}")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A target directory that outlives the clone: CI runs in a fresh clone on the machine the
# work was done on, and the AWS SDK takes about ten minutes to build cold on two cores.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log "cargo fmt --check"
cargo fmt --all --check

log "shellcheck"
shellcheck scripts/*.sh .ci/run

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "building the tests"
cargo test --workspace --locked --no-run

log "LocalStack"
started_localstack=false
if ! scripts/localstack.sh status >/dev/null 2>&1; then
  started_localstack=true
fi
cleanup() {
  if $started_localstack; then scripts/localstack.sh stop || true; fi
}
trap cleanup EXIT
endpoint=$(scripts/localstack.sh start)

# Throwaway credentials and a loopback endpoint: nothing here can reach AWS.
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

log "cargo test"
cargo test --workspace --locked
