#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 with its management API on
# 127.0.0.1:15672: installs it from the distribution's packages if missing, starts it
# with `rabbitmq-server -detached` if it is not running (never through
# service/systemctl, which need systemd as PID 1) with an open-file limit that fits,
# waits until it is up, and enables the management plugin. Idempotent; safe to run
# before every test run.
#
# The limit: GEARMQ_RABBITMQ_NOFILE (default 65536), or the hard limit if that is lower.
# A node's descriptor limit must hold 2 per durable queue + 1 per connection + 256
# (docs/PRODUCTION.md; `gearmq broker check` reports it): one started with the common
# 1,024 did not finish restarting with 1,011 durable queues. A node already running
# keeps its limit; this script only says so (stop it and run the script again).
set -euo pipefail

log() { printf 'ensure-rabbitmq: %s\n' "$*" >&2; }

nofile_wanted=${GEARMQ_RABBITMQ_NOFILE:-65536}

# The limit the running node read from the OS at start (what the management API's
# fd_total shows); empty if it cannot be read.
node_limit() {
  rabbitmqctl -q eval 'file_handle_cache:ulimit().' 2>/dev/null | tr -dc '0-9'
}

start_node() {
  # As root the hard limit can be raised too; elsewhere it caps what we may ask.
  ulimit -Hn "$nofile_wanted" 2>/dev/null || true
  local hard limit
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$nofile_wanted" ]; then
    limit=$nofile_wanted
  else
    limit=$hard
  fi
  ulimit -Sn "$limit"
  log "starting RabbitMQ with an open-file limit of $limit (rabbitmq-server -detached)"
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then
    # /usr/sbin/rabbitmq-server switches user through `su rabbitmq`, whose PAM session
    # resets the soft limit to 1,024 whatever ours is: switch without PAM instead.
    (cd /var/lib/rabbitmq &&
      setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
        env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached)
  else
    rabbitmq-server -detached
  fi
}

if ! command -v rabbitmqctl >/dev/null 2>&1; then
  log "rabbitmq-server is not installed; installing it from the distribution's packages"
  export DEBIAN_FRONTEND=noninteractive
  # The package's postinst tries to start the service through invoke-rc.d; without
  # systemd as PID 1 that may fail harmlessly, we start it ourselves below.
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null || true
  command -v rabbitmqctl >/dev/null 2>&1 || { log "installing rabbitmq-server failed"; exit 1; }
fi

started=
if rabbitmqctl -q status >/dev/null 2>&1; then
  log "RabbitMQ is running"
else
  start_node
  started=yes
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
# The list is read whole first: piped into `grep -q` under pipefail, grep's early exit
# kills rabbitmqctl with SIGPIPE once the list is long (tests running beside this make
# users), which read as "no guest". add_user may still race another run: an existing
# guest is what we want either way.
users=$(rabbitmqctl -q list_users 2>/dev/null || true)
if ! awk '$1 == "guest" { found = 1 } END { exit !found }' <<<"$users"; then
  log "creating user guest"
  rabbitmqctl -q add_user guest guest >/dev/null 2>&1 ||
    rabbitmqctl -q list_users 2>/dev/null | awk '$1 == "guest" { found = 1 } END { exit !found }' ||
    { log "could not create user guest"; exit 1; }
  rabbitmqctl -q set_user_tags guest administrator >/dev/null
fi
rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null

limit=$(node_limit)
if [ -z "$limit" ]; then
  log "could not read the node's open-file limit (rabbitmqctl eval)"
elif [ -n "$started" ] || [ "$limit" -ge "$nofile_wanted" ]; then
  log "the node's open-file limit is $limit"
else
  log "the running node's open-file limit is $limit (wanted: $nofile_wanted); it is kept." \
    "\`gearmq broker check\` says whether a fleet fits; to raise it, stop the node" \
    "(rabbitmqctl stop) and run this script again"
fi

# `gearmq broker --management` and its tests use the management API (guest may log in
# from loopback only, which is where the tests are).
if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
  log "enabling the management plugin"
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi
deadline=$((SECONDS + 60))
until (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; do
  if ((SECONDS >= deadline)); then
    log "the management API did not answer on 127.0.0.1:15672 within 60 s"
    exit 1
  fi
  sleep 1
done
log "RabbitMQ is ready on 127.0.0.1:5672 (management API on 127.0.0.1:15672)"
