#!/bin/sh
# realtime-stack instance user-data, rendered by `realtime-stack up`. User-data runs once,
# at the first boot: it installs the realtime-stack-boot service (its program is
# scripts/instance-boot.sh, embedded below) and starts it. The service does the boot -
# Redis endpoint from the instance's tags, binary from the stack's bucket, chat-server
# unit - retrying until it succeeds, and runs again at every later boot. Nothing in here
# is secret: no credentials, no signed links.
set -eu

# For tests and `--local` only: on an instance these are systemd and /.
SYSTEMCTL=${RTS_SYSTEMCTL:-systemctl}
ROOT=${RTS_ROOT:-}

log() { echo "realtime-stack boot: $*"; }

log "installing the realtime-stack-boot service"
mkdir -p "$ROOT/opt/realtime-stack" "$ROOT/etc/systemd/system"
cat >"$ROOT/opt/realtime-stack/boot" <<'REALTIME_STACK_BOOT_PROGRAM'
@BOOT_PROGRAM@
REALTIME_STACK_BOOT_PROGRAM
chmod 0755 "$ROOT/opt/realtime-stack/boot"

cat >"$ROOT/etc/systemd/system/realtime-stack-boot.service" <<'UNIT'
[Unit]
Description=realtime-stack boot: fetch the chat server and start it
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=/opt/realtime-stack/boot
# Its lines go to the console, where GetConsoleOutput and `realtime-stack logs` read them.
StandardOutput=journal+console
StandardError=journal+console
# The program retries by itself; this only covers it dying.
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT

"$SYSTEMCTL" daemon-reload
"$SYSTEMCTL" enable realtime-stack-boot.service
"$SYSTEMCTL" start realtime-stack-boot.service
log "realtime-stack-boot started; it logs each attempt here"
