#!/usr/bin/env bash
# Installs the Debian packages the bindings and tests need, only when something is missing (idempotent).
set -euo pipefail
need=()
# puma and ruby-rack: a third-party server run as command workers (examples/puma, tests/e2e/test_apps.py);
# unicorn, nodejs and golang-go likewise (examples/unicorn, examples/node, examples/go; tests/e2e/test_apps.py).
# systemd: only for systemd-socket-activate (tests/e2e/test_systemd.py); installing it in a container starts
# nothing (it is not PID 1 there).
for pkg in ruby ruby-dev libclang-dev rake ruby-minitest netcat-openbsd iproute2 procps util-linux puma ruby-rack unicorn nodejs golang-go systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "setup-system: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
