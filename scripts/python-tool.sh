#!/usr/bin/env bash
# Public tools the tests run, each from PyPI in a virtualenv of its own outside the clone
# (~/.cache/realtime-stack/<tool>-<version>), installed on first use; prints the path of
# the tool's command. scripts/test.sh installs them while the tests build.
#
#   scripts/python-tool.sh parliament   an IAM policy linter (https://github.com/duo-labs/parliament):
#                                       tests/operator.rs lints `realtime-stack policy` with it
#   scripts/python-tool.sh prowler      an AWS security scanner (https://github.com/prowler-cloud/prowler),
#                                       about 2 GB: tests/scan.rs points it at a stack in LocalStack
#   scripts/python-tool.sh wstest       the Autobahn WebSocket conformance suite
#                                       (https://github.com/crossbario/autobahn-testsuite), on
#                                       Python 2.7: app/tests/conformance.rs runs it against /ws
set -euo pipefail

tool=${1:-}
case $tool in
  parliament) package=parliament version=1.6.4 ;;
  prowler) package=prowler version=5.46.0 ;;
  wstest) package=autobahntestsuite version=25.10.1 ;;
  *) echo "usage: $0 parliament|prowler|wstest" >&2; exit 2 ;;
esac
cache=${XDG_CACHE_HOME:-$HOME/.cache}/realtime-stack
venv=$cache/$tool-$version

log() { printf '%s: %s\n' "$tool" "$*" >&2; }

# A virtualenv of Python 3, or for wstest of Python 2.7, which the suite still needs:
# made by virtualenv 20.21, the last that makes Python 2 environments, itself installed
# in a Python 3 virtualenv.
make_venv() {
  if [[ $tool != wstest ]]; then
    python3 -m venv "$venv" || { log "could not create a virtualenv: apt-get install python3-venv"; exit 1; }
    return
  fi
  # pyenv's shim is on PATH even when no 2.7 is selected, so each is tried, not found.
  local python2='' candidate
  for candidate in python2.7 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7; do
    if "$candidate" -c '' 2>/dev/null; then python2=$candidate; break; fi
  done
  [[ -n $python2 ]] || { log "Python 2.7 not found (on PATH or under pyenv): pyenv install 2.7.18"; exit 1; }
  local maker=$cache/virtualenv-20.21.1
  if [[ ! -x $maker/bin/virtualenv ]]; then
    rm -rf "$maker"
    python3 -m venv "$maker" || { log "could not create a virtualenv: apt-get install python3-venv"; exit 1; }
    "$maker/bin/pip" install --disable-pip-version-check --progress-bar off --quiet virtualenv==20.21.1 >&2 ||
      { log "pip could not install virtualenv==20.21.1 from PyPI"; exit 1; }
  fi
  "$maker/bin/virtualenv" --quiet --python "$python2" "$venv" >&2 ||
    { log "virtualenv could not make a Python 2.7 environment with $python2"; exit 1; }
}

if [[ ! -f $venv/.installed ]]; then
  command -v python3 >/dev/null || { log "python3 not found: run scripts/prerequisites.sh test"; exit 1; }
  log "installing $package $version into $venv (first time only)"
  rm -rf "$venv"
  make_venv
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar off --quiet "$package==$version" >&2 ||
    { log "pip could not install $package==$version from PyPI"; exit 1; }
  touch "$venv/.installed"
fi
echo "$venv/bin/$tool"
