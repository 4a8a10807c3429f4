#!/usr/bin/env bash
# A Python server whose workers are a Python function and a Ruby server whose workers are a Ruby block, on one
# port, under continuous load; each group is reloaded on its own (new workers beside the old, one at a time).
# Prints the answers per runtime and the failed connections (0).
# Run: make setup-python setup-ruby && examples/mixed_workers.sh [PORT [SECONDS]]     (PORT 0: any free port)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-1234}
SECONDS_OF_LOAD=${2:-6}
PYTHON=${PYTHON:-python3}
HOST=127.0.0.1 # every server sharing a port must bind the same address
LOGS=$(mktemp -d)
export PORT_SHARDING_CONTROL_DIR="$LOGS/control" # private: status/reload of other servers are not disturbed
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done # SIGTERM drains
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$LOGS"
}
trap cleanup EXIT

PY_SERVER='
import sys, port_sharding
def worker(listener):  # the talk loop, naming its runtime
    for client, addr in listener:
        client.sendall(b"python " + client.recv(1024))
        client.close()
port_sharding.serve(int(sys.argv[1]), host=sys.argv[2], workers=2, worker=worker)'
RB_SERVER='
require "port_sharding"
PortSharding.serve(Integer(ARGV[0]), host: ARGV[1], workers: 2) do |listener|
  listener.each { |client, _addr| client.write("ruby " + client.recv(1024)); client.close }
end'

start() { # name command...
  local name=$1
  shift
  setsid "$@" 2>"$LOGS/$name.log" &
  pids+=($!)
  for _ in $(seq 300); do # up to 30 s
    grep -q "ready:" "$LOGS/$name.log" 2>/dev/null && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
  done
  echo "mixed_workers.sh: $name did not start:" >&2
  cat "$LOGS/$name.log" >&2
  exit 1
}

start python "$PYTHON" -c "$PY_SERVER" "$PORT" "$HOST"
if [ "$PORT" = 0 ]; then # 0: the first server picks a free port, the other joins it
  PORT=$(sed -n 's/.*server starting on [^ ]*:\([0-9]*\):.*/\1/p' "$LOGS/python.log" | head -1)
fi
start ruby ruby -e "$RB_SERVER" "$PORT" "$HOST"
echo "Python function workers (pid ${pids[0]}) and Ruby block workers (pid ${pids[1]}) on $HOST:$PORT"

# Load from 4 threads for SECONDS_OF_LOAD; meanwhile reload the Python group, then the Ruby group.
"$PYTHON" - "$PORT" "$HOST" "$SECONDS_OF_LOAD" "${pids[0]}" "${pids[1]}" <<'PY'
import collections, socket, sys, threading, time
import port_sharding

port, host, seconds, py_pid, rb_pid = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
answers = collections.Counter()
lock = threading.Lock()
stop = time.monotonic() + seconds

def load(n):
    for i in range(1_000_000):  # bounded in count and time
        if time.monotonic() > stop:
            return
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"%d" % i)
                reply = s.recv(1024)
            runtime = reply.split(b" ")[0].decode() if reply.endswith(b" %d" % i) else "failed"
        except OSError:
            runtime = "failed"
        with lock:
            answers[runtime] += 1

def pids(server):
    return sorted(w["pid"] for s in port_sharding.status(port, host) if s["pid"] == server for w in s["workers"])

threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for name, server in (("python", py_pid), ("ruby", rb_pid)):
    time.sleep(seconds / 4)
    before = pids(server)
    report = port_sharding.reload(port, host, pid=server)[0]
    print(f"reload {name} (pid {server}): workers {before} -> {pids(server)}, failed: {report['failed']}")
for t in threads:
    t.join()
print("answers by runtime:")
for runtime in ("python", "ruby"):
    print(f"  {runtime}: {answers[runtime]}")
print(f"failed connections: {answers['failed']}")
PY
