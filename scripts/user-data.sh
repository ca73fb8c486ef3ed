#!/bin/sh
# realtime-stack instance boot, rendered by `realtime-stack up` into each instance's
# user-data. It reads the Redis endpoint from the instance's own tags through IMDSv2
# (waiting until `up` writes it, so instances boot while Redis is still being created),
# downloads the chat-server binary by its presigned link, checks its SHA-256, and runs it
# under a sandboxed systemd unit. Every step is logged to the console. Safe to run twice.
set -eu

# Filled in by `realtime-stack up`.
BINARY_URL='@BINARY_URL@'
BINARY_SHA256='@BINARY_SHA256@'
APP_PORT='@APP_PORT@'
DRAIN_SECONDS='@DRAIN_SECONDS@'
REDIS_SCHEME='@REDIS_SCHEME@'
REDIS_TAG='@REDIS_TAG@'

# For tests only: on an instance these are the real metadata service, systemd and /.
IMDS_URL=${RTS_IMDS_URL:-http://169.254.169.254}
SYSTEMCTL=${RTS_SYSTEMCTL:-systemctl}
ROOT=${RTS_ROOT:-}
TAG_WAIT_SECONDS=${RTS_TAG_WAIT_SECONDS:-3600}

# cloud-init copies a user-data script's output to the console and its log.
log() { echo "realtime-stack boot: $*"; }
fail() {
  log "FAILED: $*"
  exit 1
}

imds() {
  token=$(curl -fsS --max-time 5 -X PUT "$IMDS_URL/latest/api/token" \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || return 1
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS_URL/latest/meta-data/$1"
}

log "waiting for the Redis endpoint in instance tag $REDIS_TAG"
waited=0
pause=1
until endpoint=$(imds "tags/instance/$REDIS_TAG" 2>/dev/null) && [ -n "$endpoint" ]; do
  if [ "$waited" -ge "$TAG_WAIT_SECONDS" ]; then
    fail "no $REDIS_TAG tag after ${waited}s: check that instance metadata tags are enabled and that 'realtime-stack up' finished"
  fi
  sleep "$pause"
  waited=$((waited + pause))
  pause=$((pause * 2))
  [ "$pause" -le 30 ] || pause=30
done
log "Redis endpoint is $endpoint"
instance_id=$(imds instance-id) || fail "cannot read instance-id from the instance metadata service"

install_dir=$ROOT/opt/realtime-stack
config_dir=$ROOT/etc/realtime-stack
unit_dir=$ROOT/etc/systemd/system
mkdir -p "$install_dir" "$config_dir" "$unit_dir"

log "downloading chat-server ($BINARY_SHA256)"
curl -fsS --retry 10 --retry-delay 3 --retry-all-errors --max-time 300 \
  -o "$install_dir/chat-server.download" "$BINARY_URL" ||
  fail "could not download the chat-server binary (is the S3 gateway endpoint on the private route table?)"
actual=$(sha256sum "$install_dir/chat-server.download" | cut -d' ' -f1)
if [ "$actual" != "$BINARY_SHA256" ]; then
  rm -f "$install_dir/chat-server.download"
  fail "chat-server binary has SHA-256 $actual, expected $BINARY_SHA256: refusing to run it"
fi
chmod 0755 "$install_dir/chat-server.download"
mv -f "$install_dir/chat-server.download" "$install_dir/chat-server"
log "binary verified and installed"

umask 077
cat >"$config_dir/chat-server.env" <<ENV
REDIS_URL=$REDIS_SCHEME://$endpoint
CHAT_LISTEN=0.0.0.0:$APP_PORT
CHAT_INSTANCE_ID=$instance_id
CHAT_DRAIN_SECS=$DRAIN_SECONDS
ENV
umask 022
cat >"$unit_dir/chat-server.service" <<UNIT
[Unit]
Description=realtime-stack chat server
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/opt/realtime-stack/chat-server
EnvironmentFile=/etc/realtime-stack/chat-server.env
Restart=on-failure
RestartSec=2
# SIGTERM starts the drain; give it the drain period and a margin before SIGKILL.
TimeoutStopSec=$((DRAIN_SECONDS + 15))
LimitNOFILE=65536
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
UNIT

log "starting chat-server on port $APP_PORT"
"$SYSTEMCTL" daemon-reload
"$SYSTEMCTL" enable chat-server.service
"$SYSTEMCTL" restart chat-server.service
log "chat-server started"
