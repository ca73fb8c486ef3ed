#!/usr/bin/env bash
# parliament, a public IAM policy linter (https://github.com/duo-labs/parliament), in a
# virtualenv of its own outside the clone (~/.cache/realtime-stack/parliament-<version>),
# installed from PyPI on first use. Prints the path of its `parliament` command; the
# policy test (tests/operator.rs) runs it on `realtime-stack policy`'s output.
set -euo pipefail

version=1.6.4
venv=${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack/parliament-$version

log() { printf 'parliament: %s\n' "$*" >&2; }

if [[ ! -f $venv/.installed ]]; then
  command -v python3 >/dev/null || { log "python3 not found: run scripts/prerequisites.sh test"; exit 1; }
  log "installing parliament $version into $venv (first time only)"
  rm -rf "$venv"
  python3 -m venv "$venv" || { log "could not create a virtualenv: apt-get install python3-venv"; exit 1; }
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar off --quiet "parliament==$version" >&2 ||
    { log "pip could not install parliament==$version from PyPI"; exit 1; }
  touch "$venv/.installed"
fi
echo "$venv/bin/parliament"
