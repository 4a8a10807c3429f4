#!/usr/bin/env bash
# Zero-loss rolling upgrade across runtimes: Python → Ruby → Rust CLI on one port, under continuous load.
#   make demo                              (builds and installs what it needs first)
#   examples/rolling_upgrade.sh [PORT]     (default 1234; needs the Python package, the gem and the CLI)
#
# Each new server starts with --takeover: it receives the running server's listening sockets over its
# control socket (SCM_RIGHTS), starts its workers, says ready, and only then does the old one drain.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-${PORT:-1234}}
BIN=${PORT_SHARDING_BIN:-target/release/port-sharding}
LOAD_SECONDS=${LOAD_SECONDS:-8}
work=$(mktemp -d)
export PORT_SHARDING_CONTROL_DIR="$work/control"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done  # our own process groups only
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: a server in its own process group, log in $work/NAME.log; waits until it is ready.
start() {
  local name=$1; shift
  setsid "$@" --host 127.0.0.1 --port "$PORT" --workers 2 2>"$work/$name.log" </dev/null &
  pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 1 300); do
    grep -q "ready:" "$work/$name.log" && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.05
  done
  echo "rolling_upgrade: $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}

wait_exit() { # wait_exit PID: the old generation drains and exits by itself
  for _ in $(seq 1 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  echo "rolling_upgrade: pid $1 did not exit" >&2; exit 1
}

served() { grep -o "served [0-9]* connection" "$work/$1.log" | grep -o "[0-9]*" || echo "?"; }

echo "1. Python server on 127.0.0.1:$PORT"
start python python3 -m port_sharding serve
setsid "$BIN" bench --port "$PORT" --workload conn --concurrency 8 --duration "${LOAD_SECONDS}s" --json \
  >"$work/load.json" 2>/dev/null </dev/null &
load_pid=$!; pids+=($load_pid)
sleep 2
echo "2. Ruby server takes over from Python (pid $python_pid)"
start ruby ruby ruby/exe/port-sharding serve --takeover
wait_exit "$python_pid"
sleep 2
echo "3. Rust CLI takes over from Ruby (pid $ruby_pid)"
start cli "$BIN" serve --takeover
wait_exit "$ruby_pid"
wait "$load_pid"
kill -TERM "$cli_pid"; wait_exit "$cli_pid"

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
r = json.load(open(f"{work}/load.json"))
def served(name):
    for line in open(f"{work}/{name}.log"):
        if "served " in line:
            return int(line.split("served ")[1].split()[0])
    return "?"
print()
print(f"{'generation':<12}{'runtime':<9}{'connections answered':>22}")
for i, (name, runtime) in enumerate([("python", "Python"), ("ruby", "Ruby"), ("cli", "Rust CLI")], 1):
    print(f"{i:<12}{runtime:<9}{served(name):>22}")
e = r["errors"]
print(f"\nclient: {r['ops']} connections in {r['elapsed_s']:.1f}s, failed connections: {e['total']} "
      f"(refused {e['refused']}, reset {e['reset']}, timeout {e['timeout']}, wrong echo {e['wrong_echo']})")
sys.exit(1 if e["total"] else 0)
PY
