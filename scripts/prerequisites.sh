#!/usr/bin/env bash
# What this machine needs for the demo (`demo`) or for the tests (`test`), installed from
# Debian when missing: the one install step that scripts/demo.sh and scripts/test.sh share.
# As root it installs; with password-less sudo it uses sudo; otherwise it changes nothing
# and prints the exact command to run.
#
#   scripts/prerequisites.sh demo    redis-server, redis-tools, openssl, curl, python3 with venv, musl-tools
#   scripts/prerequisites.sh test    the same, plus Chromium, chromedriver, shellcheck, and
#                                    for the Graviton cross build clang and musl's arm64
#                                    headers (musl-dev:arm64, Debian's arm64 architecture)
#
# The Rust toolchain itself comes from rust-toolchain.toml (rustup installs the pinned
# channel and its components on first use); the musl targets are added here if missing.
set -euo pipefail

log() { printf 'prerequisites: %s\n' "$*" >&2; }

profile=${1:-}
# Debian package by the command that shows it is installed.
declare -A packages=(
  [redis-server]=redis-server
  # redis-cli joins the servers of a local Redis Cluster (redis.shards > 1).
  [redis-cli]=redis-tools
  [openssl]=openssl
  [curl]=curl
  [python3]=python3
  [musl-gcc]=musl-tools
)
case $profile in
  demo) ;;
  test)
    packages+=(
      [chromium]=chromium
      [chromedriver]=chromium-driver
      [shellcheck]=shellcheck
      # The Graviton cross build compiles ring's C with clang (.cargo/config.toml).
      [clang]=clang
    )
    ;;
  *)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac

missing=()
for command in "${!packages[@]}"; do
  command -v "$command" >/dev/null || missing+=("${packages[$command]}")
done
# Debian splits venv (and the pip it bootstraps) out of python3.
if command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
# The Graviton cross build compiles mimalloc's C (the musl build's allocator) against
# musl's aarch64 headers (.cargo/config.toml): a package of Debian's arm64 architecture.
arm64_headers=false
if [[ $profile == test && ! -e /usr/include/aarch64-linux-musl/stdlib.h ]]; then
  missing+=(musl-dev:arm64)
  arm64_headers=true
fi
if ! command -v cargo >/dev/null; then
  log "cargo not found: install Rust with rustup (https://rustup.rs); rust-toolchain.toml then picks the version"
  exit 1
fi
# rustup adds rust-toolchain.toml's targets only when it installs the toolchain: one that
# was there before may lack the musl targets the static chat-server is built for.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if command -v rustup >/dev/null; then
  installed=$(rustup target list --installed)
  for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    if ! grep -qx "$target" <<<"$installed"; then
      log "adding the Rust target $target (rustup target add $target)"
      rustup target add "$target"
    fi
  done
fi
if ((${#missing[@]} == 0)); then
  log "everything the $profile needs is installed"
  exit 0
fi

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
install=(apt-get install -y --no-install-recommends "${missing[@]}")
if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo)
else
  log "missing Debian packages: ${missing[*]}"
  log "nothing was changed; install them with:"
  if $arm64_headers; then
    printf '\n    sudo dpkg --add-architecture arm64' >&2
  fi
  printf '\n    sudo apt-get update && sudo %s\n\n' "${install[*]}" >&2
  exit 1
fi

started=$SECONDS
log "installing Debian packages: ${missing[*]}"
if $arm64_headers && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  "${sudo[@]}" dpkg --add-architecture arm64
fi
"${sudo[@]}" apt-get update -o Dpkg::Use-Pty=0
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${install[@]}" -o Dpkg::Use-Pty=0
log "installed ${missing[*]} in $((SECONDS - started)) s"
