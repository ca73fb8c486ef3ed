#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints and every test of the
# workspace, against a LocalStack and the system packages it installs when missing.
# Whatever it starts, it stops. Ends with how long each phase took.
#
# Clippy, the test build and LocalStack's start run side by side: on two cores the build
# of aws-sdk-ec2 (one rustc process, four minutes cold) leaves the other core idle. The
# tests run under cargo-nextest, every test binary at once (.config/nextest.toml).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

phases=()
phase_started=$SECONDS
phase_name=
phase() {
  [[ -z $phase_name ]] || phases+=("$(printf '%5d s  %s' $((SECONDS - phase_started)) "$phase_name")")
  phase_name=$1
  phase_started=$SECONDS
  [[ -z $phase_name ]] || printf '\n==> %s\n' "$phase_name" >&2
}
started_localstack=false
finish() {
  local status=$1
  if $started_localstack; then scripts/localstack.sh stop || true; fi
  phase ""
  printf '\n==> times (%s)\n' "$( ((status == 0)) && echo passed || echo "FAILED, exit $status")" >&2
  printf '%s\n' "${phases[@]}" >&2
  printf '%5d s  in all\n' "$SECONDS" >&2
}
trap 'finish $?' EXIT

phase "prerequisites"
scripts/prerequisites.sh test
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found: installing it from crates.io (a few minutes, once)" >&2
  cargo install --locked cargo-nextest
fi

# Target directories that outlive the clone: CI runs in a fresh clone on the machine the
# work was done on. Clippy's check artefacts have nothing in common with the test build's,
# so it gets a directory of its own and the two build at the same time.
cache=${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
clippy_target=${CLIPPY_TARGET_DIR:-$cache/clippy-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

phase "cargo fmt --check, shellcheck"
cargo fmt --all --check
shellcheck scripts/*.sh .ci/run

# LocalStack is started (and installed, the first time) while the builds run.
if ! scripts/localstack.sh status >/dev/null 2>&1; then
  started_localstack=true
fi

phase "clippy, the test build and LocalStack, side by side"
logs=$(mktemp -d)
declare -A jobs=()
# Runs a command in the background, its output prefixed with its name.
background() {
  local name=$1
  shift
  { "$@" 2>&1 | sed -u "s/^/[$name] /" >&2; exit "${PIPESTATUS[0]}"; } &
  jobs[$name]=$!
}
background clippy env CARGO_TARGET_DIR="$clippy_target" \
  cargo clippy --workspace --all-targets --locked -- -D warnings
background build cargo nextest run --workspace --locked --no-run
background localstack sh -c "scripts/localstack.sh start >'$logs/endpoint'"
failed=()
for name in "${!jobs[@]}"; do
  wait "${jobs[$name]}" || failed+=("$name")
done
if ((${#failed[@]})); then
  echo "failed: ${failed[*]} (their lines above are prefixed with the name)" >&2
  exit 1
fi
endpoint=$(tail -n 1 "$logs/endpoint")

# Throwaway credentials and a loopback endpoint: nothing here can reach AWS.
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

phase "cargo nextest run"
cargo nextest run --workspace --locked
