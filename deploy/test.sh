#!/usr/bin/env bash
# The whole gearmq test suite, as a newcomer and CI run it:
#   deploy/test.sh
# Makes sure RabbitMQ is running, builds every crate once (one profile), then runs every
# unit, property, vector and end-to-end test. End-to-end tests use the real broker on
# 127.0.0.1:5672 (a vhost of their own each) and real agent processes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/ensure-rabbitmq.sh

# systemd-analyze checks deploy/gearmq-agent.service, the unit tests run a real
# `systemd --user`, and the journal test runs systemd-journald and journalctl: all come
# with Debian's systemd package (never started as PID 1).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "test.sh: installing systemd (for systemd-analyze and systemd --user)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq systemd >/dev/null
fi

# The by-URL artifact test serves files with Python's http.server.
if ! command -v python3 >/dev/null 2>&1; then
  echo "test.sh: installing python3 (the artifact test's HTTP server)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3-minimal >/dev/null
fi

# One profile for everything: the binaries the end-to-end tests spawn are the ones
# this build makes.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads "${GEARMQ_TEST_THREADS:-4}"
# Its own step: a three-node RabbitMQ cluster on this machine (quorum queues, a node
# stopped under traffic), the one ignored test of the end-to-end binary.
# GEARMQ_SKIP_CLUSTER=1 leaves it out.
if [ -z "${GEARMQ_SKIP_CLUSTER:-}" ]; then
  # --workspace, like the build above: the same features, so nothing is rebuilt.
  # Every crate's e2e binary is named; only gearmq-tests has cluster:: tests.
  cargo test --workspace --test e2e --locked -- --ignored --test-threads 1 cluster::
fi
