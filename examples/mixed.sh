#!/usr/bin/env bash
# Two Python and two Ruby servers (hello mode) on one port; a few hundred connections; who answered.
# Run: make setup-python setup-ruby && examples/mixed.sh [PORT [CONNECTIONS]]     (PORT 0: any free port)
# Each server is examples/hello.{py,rb} (one worker per CPU) in its own process group, stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-1234}
CONNECTIONS=${2:-300}
HOST=127.0.0.1 # every server sharing a port must bind the same address
LOGS=$(mktemp -d)
export PORT_SHARDING_CONTROL_DIR="$LOGS/control" # private: status/stop of other servers are not disturbed
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done # SIGTERM drains
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$LOGS"
}
trap cleanup EXIT

start() { # runtime script n
  setsid "$1" "$2" "$PORT" "$HOST" 2>"$LOGS/$1-$3.log" &
  pids+=($!)
  for _ in $(seq 300); do # up to 30 s
    grep -q "ready:" "$LOGS/$1-$3.log" 2>/dev/null && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
  done
  echo "mixed.sh: $1 $2 did not start:" >&2
  cat "$LOGS/$1-$3.log" >&2
  exit 1
}

start python3 examples/hello.py 1
if [ "$PORT" = 0 ]; then # 0: the first server picks a free port, the others join it
  PORT=$(sed -n 's/.*server starting on [^ ]*:\([0-9]*\):.*/\1/p' "$LOGS/python3-1.log" | head -1)
fi
start ruby examples/hello.rb 1
start python3 examples/hello.py 2
start ruby examples/hello.rb 2
echo "4 servers (2 Python, 2 Ruby) on $HOST:$PORT; $CONNECTIONS connections:"

replies="$LOGS/replies"
for _ in $(seq "$CONNECTIONS"); do
  timeout 5 bash -c "exec 3<>/dev/tcp/$HOST/$PORT && cat <&3" >>"$replies" 2>/dev/null \
    || echo "no answer from - -" >>"$replies"
done

echo "by runtime:"
awk '{print $3}' "$replies" | sort | uniq -c | sed 's/^/  /'
echo "by process:"
awk '{print $3, "process", $5}' "$replies" | sort | uniq -c | sed 's/^/  /'
