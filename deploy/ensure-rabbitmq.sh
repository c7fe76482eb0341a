#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs it from the
# distribution's packages if missing, starts it with `rabbitmq-server -detached` if it is
# not running (never through service/systemctl, which need systemd as PID 1), and waits
# until it is up. Idempotent; safe to run before every test run.
set -euo pipefail

log() { printf 'ensure-rabbitmq: %s\n' "$*" >&2; }

if ! command -v rabbitmqctl >/dev/null 2>&1; then
  log "rabbitmq-server is not installed; installing it from the distribution's packages"
  export DEBIAN_FRONTEND=noninteractive
  # The package's postinst tries to start the service through invoke-rc.d; without
  # systemd as PID 1 that may fail harmlessly, we start it ourselves below.
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null || true
  command -v rabbitmqctl >/dev/null 2>&1 || { log "installing rabbitmq-server failed"; exit 1; }
fi

if rabbitmqctl -q status >/dev/null 2>&1; then
  log "RabbitMQ is running"
else
  log "starting RabbitMQ (rabbitmq-server -detached)"
  rabbitmq-server -detached
fi

# -detached returns before the node is up, and await_startup fails at once (rather than
# waiting) while the Erlang node itself is not reachable yet: retry until it answers.
deadline=$((SECONDS + 120))
until rabbitmqctl -q await_startup >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    log "RabbitMQ did not come up within 120 s"
    exit 1
  fi
  sleep 1
done

# The tests log in as guest from loopback; make sure guest exists with full rights on /.
if ! rabbitmqctl -q list_users 2>/dev/null | grep -q '^guest'; then
  log "creating user guest"
  rabbitmqctl -q add_user guest guest >/dev/null
  rabbitmqctl -q set_user_tags guest administrator >/dev/null
fi
rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
log "RabbitMQ is ready on 127.0.0.1:5672"
