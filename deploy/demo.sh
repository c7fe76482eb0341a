#!/usr/bin/env bash
# The operator's and the auditor's walk-through on one machine:
#   deploy/demo.sh
# Two hosts (web1, web2), each an agent with a systemd user manager of its own (so the
# demo needs no systemd as PID 1), one operator who installs, starts, inspects, stops
# and deletes a service on both, ships a program with the request, sees it come back
# after a "reboot" of web1's manager, restarts a service of the hosts' own that
# gearmq did not create, and watches the fleet's signed events (a crashing service, a
# host that stops answering); and an auditor who verifies the signed audit logs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/ensure-rabbitmq.sh
command -v busctl >/dev/null && [ -x /usr/lib/systemd/systemd ] || {
  echo "installing systemd (for its user manager and busctl)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
}
cargo build --locked -q -p gearmq-agent -p gearmq-cli
BIN=$PWD/target/debug
W=$(mktemp -d /tmp/gearmq-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for cg in /sys/fs/cgroup/systemd/gearmq-demo-* /sys/fs/cgroup/unified/gearmq-demo-*; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT
run() { echo; echo "\$ gearmq $*"; "$BIN/gearmq" --config "$W/fleet/orchestrator.toml" "$@" || true; }

"$BIN/gearmq" init --dir "$W/fleet" --hosts web1,web2 --systemd-bus user >/dev/null
declare -A MANAGER AGENT
# A user manager for host $1, in a private mount namespace (it needs
# /run/systemd/system, which must not exist machine-wide here) and a cgroup of its own.
start_manager() {
  local h=$1 home=$W/$1/home rt=$W/$1/run cg=gearmq-demo-$1-$$
  HOME=$home XDG_RUNTIME_DIR=$rt XDG_CONFIG_HOME=$home/.config unshare -m sh -c "
    for r in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
      [ -d \$r ] && mkdir -p \$r/$cg && echo \$\$ > \$r/$cg/cgroup.procs; done
    mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system &&
    exec /usr/lib/systemd/systemd --user" 2>>"$W/$h-systemd.log" &
  MANAGER[$h]=$!; PIDS+=($!)
  for _ in $(seq 100); do
    busctl --address "unix:path=$rt/bus" status org.freedesktop.systemd1 >/dev/null 2>&1 && break
    sleep 0.1
  done
}
start_agent() {
  local h=$1 home=$W/$1/home rt=$W/$1/run
  : >"$W/$h-agent.log"
  HOME=$home XDG_RUNTIME_DIR=$rt XDG_CONFIG_HOME=$home/.config \
    "$BIN/gearmq-agent" --config "$W/fleet/hosts/$h/agent.toml" 2>"$W/$h-agent.log" &
  AGENT[$h]=$!; PIDS+=($!)
  for _ in $(seq 200); do grep -q "agent ready" "$W/$h-agent.log" && break; sleep 0.05; done
}
bus() { busctl --address "unix:path=$W/$1/run/bus" call org.freedesktop.systemd1 \
  /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager "${@:2}" >/dev/null; }
for h in web1 web2; do
  mkdir -p "$W/$h/home/.config/systemd/user" "$W/$h/run"; chmod 700 "$W/$h/run"
  # The host's own web server, which gearmq did not create: restart and status only.
  printf '[[existing]]\nunits = ["webserver.service"]\nactions = ["status", "restart"]\n' \
    >>"$W/fleet/hosts/$h/agent.toml"
  printf '[Service]\nExecStart=/bin/sleep 3600\n' >"$W/$h/home/.config/systemd/user/webserver.service"
  # alive every 2 s (10 s by default), so a silent host shows down within 6 s.
  printf '[events]\ninterval = "2s"\n' >>"$W/fleet/hosts/$h/agent.toml"
  start_manager "$h"
  bus "$h" StartUnit ss webserver.service replace
  start_agent "$h"
done

cat >"$W/hello.sh" <<'PROG'
#!/bin/sh
echo "hello, $1 (pid $$)"
while true; do echo "tick $(date +%T)"; sleep 1; done
PROG
chmod 755 "$W/hello.sh"

echo "== the operator"
run install web1,web2 hello --exec "$W/hello.sh" --arg world --restart on-failure --start
run status web1,web2 hello
sleep 2
run logs web1 hello --lines 3
run list --all
run restart web2 hello
run stop web1,web2 hello
run delete web1,web2 hello
run facts @all

echo
echo "== a program shipped with the request, enabled at boot"
mkdir -p "$W/www"
printf '#!/bin/sh\necho "shipped v1 running"\nexec sleep 3600\n' >"$W/www/app-v1"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 "$port" --directory "$W/www" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
echo
echo "\$ gearmq install web1,web2 app --artifact-url http://127.0.0.1:$port/app-v1 --artifact www/app-v1 --start"
"$BIN/gearmq" --config "$W/fleet/orchestrator.toml" install web1,web2 app \
  --artifact-url "http://127.0.0.1:$port/app-v1" --artifact "$W/www/app-v1" --start || true
run status web1,web2 app
echo
echo "(web1's manager and agent are stopped and started again: a reboot)"
kill -TERM "${AGENT[web1]}" "${MANAGER[web1]}"; wait "${AGENT[web1]}" "${MANAGER[web1]}" 2>/dev/null || true
start_manager web1; bus web1 StartUnit ss webserver.service replace; start_agent web1
sleep 1
run status web1 app
run logs web1 app --lines 1

echo
echo "== the hosts' own service, by allowlist"
run restart web1,web2 webserver.service
run stop web1,web2 webserver.service

echo
echo "== presence and events"
run hosts @all
"$BIN/gearmq" --config "$W/fleet/orchestrator.toml" watch @all --since 1s --for 12s \
  >"$W/watch.out" 2>&1 &
WATCH=$!
sleep 1
run install web1 flaky --exec /bin/sh --arg -c --arg 'sleep 1; exit 3' --restart on-failure --start
echo
echo "(web2's agent is stopped with SIGSTOP: it says nothing more)"
kill -STOP "${AGENT[web2]}"
sleep 8
run hosts @all
echo "(exit code $("$BIN/gearmq" --config "$W/fleet/orchestrator.toml" hosts @all >/dev/null 2>&1; echo $?))"
kill -CONT "${AGENT[web2]}"
wait "$WATCH" || true
echo
echo "\$ gearmq watch @all   # running meanwhile, in another terminal"
cat "$W/watch.out"
run hosts @all --down
run delete web1 flaky

echo
echo "== the auditor (needs only the logs, the issuer public key and gearmq)"
echo "\$ gearmq audit verify fleet/audit.log --issuer fleet/issuer.pub"
"$BIN/gearmq" audit verify "$W/fleet/audit.log" --issuer "$W/fleet/issuer.pub" || true
for h in web1 web2; do
  log=$W/fleet/hosts/$h/state/audit.log
  if [ -f "$log" ]; then
    echo "\$ gearmq audit verify fleet/hosts/$h/state/audit.log --issuer fleet/issuer.pub"
    "$BIN/gearmq" audit verify "$log" --issuer "$W/fleet/issuer.pub" || true
  fi
done
echo "\$ gearmq audit show fleet/audit.log | tail -4"
"$BIN/gearmq" audit show "$W/fleet/audit.log" | tail -4
