#!/usr/bin/env bash
# gearmq in one command: a 3-host fleet on this machine, pinged with verified replies.
#   deploy/quickstart.sh
# Makes sure RabbitMQ runs (installing it if missing), builds release binaries, makes a
# fleet with `gearmq init` in a temporary directory, starts three agents, runs
# `gearmq ping --all`, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/ensure-rabbitmq.sh
if [ -n "${GEARMQ_QUICKSTART_BIN:-}" ]; then
  # Binaries built already (the test suite runs this script with its own build).
  BIN=$GEARMQ_QUICKSTART_BIN
else
  echo "== building release binaries"
  cargo build --release --locked -p gearmq-agent -p gearmq-cli
  BIN=$PWD/target/release
fi

FLEET=$(mktemp -d /tmp/gearmq-quickstart.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$FLEET"
}
trap cleanup EXIT

echo "== gearmq init --dir $FLEET/fleet --hosts web1,web2,db1"
"$BIN/gearmq" init --dir "$FLEET/fleet" --hosts web1,web2,db1

for h in web1 web2 db1; do
  "$BIN/gearmq-agent" --config "$FLEET/fleet/hosts/$h/agent.toml" 2>"$FLEET/$h.log" &
  PIDS+=($!)
done
for h in web1 web2 db1; do
  for _ in $(seq 1 200); do
    grep -q "agent ready" "$FLEET/$h.log" 2>/dev/null && break
    sleep 0.05
  done
  grep -q "agent ready" "$FLEET/$h.log" || { echo "agent $h did not start:"; cat "$FLEET/$h.log"; exit 1; }
  echo "== agent $h ready"
done

echo "== gearmq --config $FLEET/fleet/orchestrator.toml ping --all"
"$BIN/gearmq" --config "$FLEET/fleet/orchestrator.toml" ping --all
