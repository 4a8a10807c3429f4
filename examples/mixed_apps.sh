#!/usr/bin/env bash
# gunicorn workers and Puma workers on ONE port (two supervisors), under continuous HTTP load; each group is
# reloaded in place while the load runs; prints the answers per runtime and the failed requests (0).
#   examples/mixed_apps.sh [PORT]     (default 8080; 0 picks a free one)
# Needs: the CLI (cargo build --release; or PORT_SHARDING_BIN), gunicorn (pip) and puma + ruby-rack (Debian);
# `make setup` installs all of them. LOAD_SECONDS (default 10) bounds the load.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-${PORT:-8080}}
BIN=${PORT_SHARDING_BIN:-target/release/port-sharding}
PYTHON=${PYTHON:-python3}
LOAD_SECONDS=${LOAD_SECONDS:-10}
work=$(mktemp -d)
export PORT_SHARDING_CONTROL_DIR="$work/control"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done  # our own supervisors only: they stop their workers
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME -- CMD...: a supervisor running CMD as 2 workers, in its own process group; waits until ready.
start() {
  local name=$1; shift
  setsid "$BIN" serve --host 127.0.0.1 --port "$PORT" --workers 2 "$@" >"$work/$name.out" 2>"$work/$name.log" </dev/null &
  pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 1 600); do
    grep -qs "ready:" "$work/$name.log" && break
    kill -0 "$!" 2>/dev/null || { echo "mixed_apps: $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  grep -qs "ready:" "$work/$name.log" || { echo "mixed_apps: $name not ready" >&2; cat "$work/$name.log" >&2; exit 1; }
  PORT=$(grep -o "starting on 127.0.0.1:[0-9]*" "$work/$name.log" | head -1 | grep -o "[0-9]*$")
}

start gunicorn -- "$PYTHON" -m gunicorn -w 1 --no-control-socket --chdir examples/gunicorn app:app
echo "1. gunicorn workers (supervisor pid $gunicorn_pid) on 127.0.0.1:$PORT"
start puma -- sh -c 'exec puma -C examples/puma/puma.rb -b tcp://127.0.0.1:$PORT_SHARDING_PORT examples/puma/config.ru'
echo "2. Puma workers (supervisor pid $puma_pid) on the same port"

# HTTP GETs (Connection: close) from 8 threads for LOAD_SECONDS, checking status and body.
"$PYTHON" - "$PORT" "$LOAD_SECONDS" >"$work/load.txt" <<'PY' &
import collections, socket, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
by, failed, lock, end = collections.Counter(), collections.Counter(), threading.Lock(), time.monotonic() + seconds
def run():
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            words = body.split()
            ok = head.startswith(b"HTTP/1.1 200") and words[:2] == [b"Hello", b"from"]
            with lock:
                (by if ok else failed)[words[2].decode() if ok else "bad reply"] += 1
        except OSError as e:
            with lock:
                failed[type(e).__name__] += 1
threads = [threading.Thread(target=run) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("answers by runtime:", ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
print(f"requests: {sum(by.values()) + sum(failed.values())}, {sum(failed.values())} failed", dict(failed) or "")
PY
load_pid=$!
sleep 2
echo "3. reload the gunicorn workers under load"
"$BIN" reload --port "$PORT" --pid "$gunicorn_pid" | sed 's/^/   /'
echo "4. reload the Puma workers under load"
"$BIN" reload --port "$PORT" --pid "$puma_pid" | sed 's/^/   /'
wait "$load_pid"
cat "$work/load.txt"
"$BIN" stop --port "$PORT" --wait 60s >/dev/null
grep -q ", 0 failed" "$work/load.txt"
