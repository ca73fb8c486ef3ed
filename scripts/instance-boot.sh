#!/bin/sh
# realtime-stack instance boot: the program of the realtime-stack-boot systemd service
# that each instance's user-data installs (scripts/user-data.sh), filled in by
# `realtime-stack up`. It runs at every boot of the instance. It reads the Redis endpoint
# from the instance's own tags through IMDSv2 (`up` writes it once Redis is available),
# downloads the chat-server binary from the stack's bucket through the S3 gateway
# endpoint - with no credentials: the bucket policy admits requests that come through
# the stack's endpoint - checks its SHA-256, writes a sandboxed systemd unit for it and
# (re)starts it. A failed attempt is logged to the console and retried with capped
# backoff, never abandoned: an instance heals on its own once the cause is gone. Then it
# watches for the Auto Scaling group taking the instance out of service, and drains the
# chat-server as soon as it does.
# Nothing in here is secret.
set -u

# Filled in by `realtime-stack up`.
BUCKET='@BUCKET@'
KEY='@KEY@'
REGION='@REGION@'
BINARY_SHA256='@BINARY_SHA256@'
APP_PORT='@APP_PORT@'
DRAIN_SECONDS='@DRAIN_SECONDS@'
REDIS_SCHEME='@REDIS_SCHEME@'
REDIS_TAG='@REDIS_TAG@'
# true when the endpoint is a Redis Cluster's configuration endpoint (redis.shards > 1):
# the server then speaks the cluster protocol from it.
REDIS_CLUSTER='@REDIS_CLUSTER@'
# Where the load balancer's connections come from: only their X-Forwarded-For is believed.
TRUSTED_PROXIES='@TRUSTED_PROXIES@'
# Sign-in (chat.auth): the PEM public key verifying the users' tokens - a public key is
# not a secret - and the issuer and audience they must name. Empty: the chat is open.
AUTH_PUBLIC_KEY='@AUTH_PUBLIC_KEY@'
AUTH_ISSUER='@AUTH_ISSUER@'
AUTH_AUDIENCE='@AUTH_AUDIENCE@'
AUTH_TOKEN_URL='@AUTH_TOKEN_URL@'
# The chat server's limits, from stack.yaml's chat section.
HISTORY_MESSAGES='@HISTORY_MESSAGES@'
MAX_ROOMS_PER_CONNECTION='@MAX_ROOMS_PER_CONNECTION@'
PRESENCE_TTL_SECONDS='@PRESENCE_TTL_SECONDS@'
FANOUT_WINDOW_MS='@FANOUT_WINDOW_MS@'

# For tests and `--local` only: on an instance these are the real metadata service, S3,
# systemd and /.
IMDS_URL=${RTS_IMDS_URL:-http://169.254.169.254}
S3_URL=https://$BUCKET.s3.$REGION.amazonaws.com
[ -z "${RTS_S3_ENDPOINT:-}" ] || S3_URL=$RTS_S3_ENDPOINT/$BUCKET
SYSTEMCTL=${RTS_SYSTEMCTL:-systemctl}
ROOT=${RTS_ROOT:-}
MAX_PAUSE=${RTS_MAX_PAUSE_SECONDS:-60}

install_dir=$ROOT/opt/realtime-stack
config_dir=$ROOT/etc/realtime-stack
unit_dir=$ROOT/etc/systemd/system

log() { echo "realtime-stack boot: $*"; }

imds() {
  token=$(curl -fsS --max-time 5 -X PUT "$IMDS_URL/latest/api/token" \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || return 1
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS_URL/latest/meta-data/$1"
}

binary_ok() {
  [ -x "$install_dir/chat-server" ] &&
    [ "$(sha256sum "$install_dir/chat-server" | cut -d' ' -f1)" = "$BINARY_SHA256" ]
}

# Gets the binary unless the right one is installed already (a reboot keeps it).
fetch_binary() {
  binary_ok && return 0
  log "downloading chat-server $BINARY_SHA256 from $S3_URL/$KEY"
  if ! curl -fsS --retry 3 --retry-delay 2 --max-time 300 \
    -o "$install_dir/chat-server.download" "$S3_URL/$KEY"; then
    why="could not download the chat-server binary (is the S3 gateway endpoint on the private route table, and does the bucket policy name it?)"
    return 1
  fi
  actual=$(sha256sum "$install_dir/chat-server.download" | cut -d' ' -f1)
  if [ "$actual" != "$BINARY_SHA256" ]; then
    rm -f "$install_dir/chat-server.download"
    why="the downloaded binary has SHA-256 $actual, expected $BINARY_SHA256: refusing to run it"
    return 1
  fi
  chmod 0755 "$install_dir/chat-server.download"
  mv -f "$install_dir/chat-server.download" "$install_dir/chat-server"
  log "binary verified and installed"
}

# The sign-in settings for the environment file, one line each, and the key's file
# (readable by the server's dynamic user).
auth_settings() {
  [ -n "$AUTH_PUBLIC_KEY" ] || return 0
  key_file=$config_dir/auth-public-key.pem
  if ! { printf '%s\n' "$AUTH_PUBLIC_KEY" >"$key_file.new" && chmod 0644 "$key_file.new" &&
    mv -f "$key_file.new" "$key_file"; }; then
    return 1
  fi
  echo "CHAT_AUTH_PUBLIC_KEY_FILE=$key_file"
  [ -z "$AUTH_ISSUER" ] || echo "CHAT_AUTH_ISSUER=$AUTH_ISSUER"
  [ -z "$AUTH_AUDIENCE" ] || echo "CHAT_AUTH_AUDIENCE=$AUTH_AUDIENCE"
  [ -z "$AUTH_TOKEN_URL" ] || echo "CHAT_AUTH_TOKEN_URL=$AUTH_TOKEN_URL"
}

write_service() {
  auth=$(auth_settings) || return 1
  (
    umask 077
    cat >"$config_dir/chat-server.env" <<ENV
REDIS_URL=$REDIS_SCHEME://$endpoint
REDIS_CLUSTER=$REDIS_CLUSTER
CHAT_LISTEN=0.0.0.0:$APP_PORT
CHAT_INSTANCE_ID=$instance_id
CHAT_DRAIN_SECS=$DRAIN_SECONDS
CHAT_TRUSTED_PROXIES=$TRUSTED_PROXIES
CHAT_HISTORY_LEN=$HISTORY_MESSAGES
CHAT_MAX_ROOMS_PER_CONNECTION=$MAX_ROOMS_PER_CONNECTION
CHAT_PRESENCE_TTL_SECS=$PRESENCE_TTL_SECONDS
CHAT_FANOUT_WINDOW_MS=$FANOUT_WINDOW_MS
$auth
ENV
  )
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
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
ProtectProc=invisible
ProcSubset=pid
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# The server needs nothing from the instance metadata service: its tags and the
# instance's identity stay out of its reach.
IPAddressDeny=169.254.169.254 fd00:ec2::254
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
}

# One attempt at the whole boot; on failure $why says what stopped it.
attempt() {
  if ! endpoint=$(imds "tags/instance/$REDIS_TAG" 2>/dev/null) || [ -z "$endpoint" ]; then
    why="no $REDIS_TAG tag yet ('realtime-stack up' writes it once Redis is available; instance metadata tags must be on)"
    return 1
  fi
  if ! instance_id=$(imds instance-id); then
    why="cannot read instance-id from the instance metadata service"
    return 1
  fi
  log "Redis endpoint is $endpoint"
  if ! mkdir -p "$install_dir" "$config_dir" "$unit_dir"; then
    why="cannot create $install_dir, $config_dir or $unit_dir"
    return 1
  fi
  fetch_binary || return 1
  if ! write_service; then
    why="cannot write the chat-server unit and its environment"
    return 1
  fi
  log "starting chat-server on port $APP_PORT"
  if ! { "$SYSTEMCTL" daemon-reload && "$SYSTEMCTL" enable chat-server.service &&
    "$SYSTEMCTL" restart chat-server.service; }; then
    why="systemctl could not start chat-server.service"
    return 1
  fi
}

number=1
pause=1
until attempt; do
  log "attempt $number failed: $why; trying again in ${pause}s"
  sleep "$pause"
  number=$((number + 1))
  pause=$((pause * 2))
  [ "$pause" -le "$MAX_PAUSE" ] || pause=$MAX_PAUSE
done
log "chat-server started (attempt $number)"

# Amazon EC2 Auto Scaling says through the instance metadata when it takes this instance
# out of service (a roll, a scale in, a replacement): the target lifecycle state turns
# Terminated as the load balancer starts draining it, before the instance is terminated
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html).
# The chat-server's drain starts then, inside the deregistration delay, and not at the
# shutdown after it, when the load balancer has cut its connections. Outside a group the
# item does not exist, and this only waits.
while :; do
  if [ "$(imds autoscaling/target-lifecycle-state 2>/dev/null)" = Terminated ]; then
    log "Auto Scaling is taking this instance out of service: draining the chat-server in 3s"
    # The load balancer stops sending new connections to the deregistered instance within
    # seconds: the clients the drain closes reconnect to the others. The target group's
    # deregistration delay has these seconds on top of the drain (DRAIN_START_SECONDS).
    sleep 3
    # RTS_STOP_TIMEOUT: what the unit's TimeoutStopSec is to the local service manager.
    RTS_STOP_TIMEOUT=$((DRAIN_SECONDS + 15)) "$SYSTEMCTL" stop chat-server.service
    log "chat-server drained and stopped"
    break
  fi
  sleep 1
done
