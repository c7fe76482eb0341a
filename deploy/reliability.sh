#!/usr/bin/env bash
# Regenerates RELIABILITY.md: runs the fault, flood, bound, attack and cluster tests with
# GEARMQ_RELIABILITY_OUT set (each appends what it observed as a JSON line), then
# renders the table with the reliability_report binary.
#   bash deploy/reliability.sh            # all of them (the cluster test boots 3 nodes)
#   GEARMQ_SKIP_CLUSTER=1 bash deploy/reliability.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/ensure-rabbitmq.sh
cargo build --workspace --all-targets --locked
out=$(mktemp /tmp/gearmq-reliability-XXXXXX.jsonl)
trap 'rm -f "$out"' EXIT
export GEARMQ_RELIABILITY_OUT="$out"
# One end-to-end binary per crate, a module per area: the filters pick the areas.
cargo test -p gearmq-tests --test e2e --locked -- --test-threads 2 faults:: attacks::
cargo test -p gearmq-agent --test e2e --locked -- --test-threads 2 bounds::
if [ -z "${GEARMQ_SKIP_CLUSTER:-}" ]; then
  cargo test -p gearmq-tests --test e2e --locked -- --ignored --test-threads 1 cluster::
fi
cargo run -q -p gearmq-tests --bin reliability_report --locked -- "$out" > RELIABILITY.md
echo "reliability.sh: wrote RELIABILITY.md ($(wc -l < "$out") observations)" >&2
