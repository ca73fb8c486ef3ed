#!/usr/bin/env bash
# Public tools the tests run, each from PyPI in a virtualenv of its own outside the clone
# (~/.cache/realtime-stack/<tool>-<version>), installed on first use; prints the path of
# the tool's command. scripts/test.sh installs them while the tests build.
#
#   scripts/python-tool.sh parliament   an IAM policy linter (https://github.com/duo-labs/parliament):
#                                       tests/operator.rs lints `realtime-stack policy` with it
#   scripts/python-tool.sh prowler      an AWS security scanner (https://github.com/prowler-cloud/prowler),
#                                       about 2 GB: tests/scan.rs points it at a stack in LocalStack
set -euo pipefail

tool=${1:-}
case $tool in
  parliament) version=1.6.4 ;;
  prowler) version=5.46.0 ;;
  *) echo "usage: $0 parliament|prowler" >&2; exit 2 ;;
esac
venv=${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/$tool-$version

log() { printf '%s: %s\n' "$tool" "$*" >&2; }

if [[ ! -f $venv/.installed ]]; then
  command -v python3 >/dev/null || { log "python3 not found: run scripts/prerequisites.sh test"; exit 1; }
  log "installing $tool $version into $venv (first time only)"
  rm -rf "$venv"
  python3 -m venv "$venv" || { log "could not create a virtualenv: apt-get install python3-venv"; exit 1; }
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar off --quiet "$tool==$version" >&2 ||
    { log "pip could not install $tool==$version from PyPI"; exit 1; }
  touch "$venv/.installed"
fi
echo "$venv/bin/$tool"
