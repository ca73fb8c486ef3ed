#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints and every test of the
# workspace, against a LocalStack and the system packages it installs when missing.
# Whatever it starts, it stops. Ends with how long each phase took.
#
# LocalStack is installed (the first time) and started while the tests build (clippy
# lints in the same compilation). The tests run under cargo-nextest, every test binary
# at once (.config/nextest.toml).
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
localstack_job=
tools_job=
# The tests run in a cgroup of their own, where everything they start stays, whatever
# session it makes, whether it daemonizes (the local Redis) or clears its environment
# (an instance's boot): what a test left behind - one that timed out and was killed
# before its clean-up ran - is found there and killed. Without a cgroup v2 this user
# may make, the tests run as they are and nothing is swept.
tests_cgroup=
make_tests_cgroup() {
  local mount ours
  mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
  ours=$(sed -n 's/^0:://p' /proc/self/cgroup)
  if [[ -n $mount && -n $ours ]] && mkdir "$mount${ours%/}/realtime-stack-tests.$$" 2>/dev/null; then
    tests_cgroup=$mount${ours%/}/realtime-stack-tests.$$
  else
    echo "no cgroup v2 to run the tests in: processes a test leaves running are not swept" >&2
  fi
}
# The processes still in the tests' cgroup, one "pid command line" per line.
test_leftovers() {
  local pid
  [[ -n $tests_cgroup ]] || return 0
  while read -r pid; do
    printf '%s %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-160)"
  done <"$tests_cgroup/cgroup.procs"
}
# Polls up to $1 seconds for the tests' processes to end; prints those still there.
test_leftovers_after() {
  local deadline=$((SECONDS + $1)) left
  left=$(test_leftovers)
  while [[ -n $left ]] && ((SECONDS < deadline)); do
    sleep 0.2
    left=$(test_leftovers)
  done
  printf '%s' "$left"
}
# Waits up to $1 seconds for the tests' processes to end (a server may still be draining
# after its test let go of it), then kills what is left and removes the cgroup; prints
# what it killed and returns 1 if it killed anything.
stop_test_leftovers() {
  local left
  [[ -n $tests_cgroup && -d $tests_cgroup ]] || return 0
  left=$(test_leftovers_after "$1")
  if [[ -n $left ]]; then
    printf 'the tests left these processes running; stopping them:\n%s\n' "$left" >&2
    if [[ -e $tests_cgroup/cgroup.kill ]]; then
      echo 1 >"$tests_cgroup/cgroup.kill"
    else
      test_leftovers | cut -d' ' -f1 | xargs -r kill -KILL 2>/dev/null || true
    fi
    test_leftovers_after 10 >/dev/null
  fi
  rmdir "$tests_cgroup" 2>/dev/null || echo "could not remove $tests_cgroup: $(test_leftovers)" >&2
  [[ -z $left ]]
}
finish() {
  local status=$1
  stop_test_leftovers 0 || true
  # A start still under way would leave a LocalStack behind: let it finish, then stop it.
  [[ -z $localstack_job ]] || wait "$localstack_job" 2>/dev/null || true
  [[ -z $tools_job ]] || wait "$tools_job" 2>/dev/null || true
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

# A target directory that outlives the clone: CI runs in a fresh clone on the machine the
# work was done on, and the AWS SDK takes minutes to build cold on two cores.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

phase "cargo fmt --check, shellcheck"
cargo fmt --all --check
shellcheck scripts/*.sh .ci/run

# LocalStack's install (network and pip, minutes the first time) overlaps the build.
if ! scripts/localstack.sh status >/dev/null 2>&1; then
  started_localstack=true
fi
logs=$(mktemp -d)
{ scripts/localstack.sh start 2>&1 >"$logs/endpoint" | sed -u 's/^/[localstack] /' >&2; exit "${PIPESTATUS[0]}"; } &
localstack_job=$!
# The public tools the tests run (an IAM policy linter, an AWS security scanner, the
# Autobahn WebSocket suite) install into virtualenvs of their own beside it, the first time.
{ { scripts/python-tool.sh parliament && scripts/python-tool.sh prowler && scripts/python-tool.sh wstest; } >/dev/null 2> >(sed -u 's/^/[tools] /' >&2); } &
tools_job=$!

# Clippy lints while the tests build, in one compilation: clippy-driver compiles the
# workspace's own crates (lib, bins, tests), rustc the dependencies. `cargo clippy` and
# then the test build compiled every dependency twice (check, then build): 7 of the
# 18 minutes of a cold run. CLIPPY_ARGS is how `cargo clippy -- -D warnings` passes
# its flags to the driver.
clippy_driver=$(rustup which clippy-driver) || { echo "clippy-driver not found: rustup component add clippy" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER=$clippy_driver
export CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__

phase "cargo clippy -D warnings and the test build"
cargo nextest run --workspace --locked --no-run
# What the instances run, and so what the boot tests boot: the static musl build; and the
# Graviton cross build, whose executable a test inspects.
cargo build --locked -p chat-server --target x86_64-unknown-linux-musl
cargo build --locked -p chat-server --target aarch64-unknown-linux-musl

phase "LocalStack, parliament, prowler and wstest"
wait "$localstack_job" || { echo "LocalStack did not start (its lines above start with [localstack])" >&2; exit 1; }
wait "$tools_job" || { echo "parliament, prowler or wstest did not install (their lines above start with [tools])" >&2; exit 1; }
endpoint=$(tail -n 1 "$logs/endpoint")

# Throwaway credentials and a loopback endpoint: nothing here can reach AWS.
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

phase "cargo nextest run"
make_tests_cgroup
(
  if [[ -n $tests_cgroup ]] && ! echo "$BASHPID" 2>/dev/null >"$tests_cgroup/cgroup.procs"; then
    echo "could not move the tests into $tests_cgroup: processes a test leaves running are not swept" >&2
  fi
  exec cargo nextest run --workspace --locked
)
# A test that passes but leaves a process running leaks it on every run: a failure.
stop_test_leftovers 20 || { echo "a test does not stop what it started (see above)" >&2; exit 1; }
