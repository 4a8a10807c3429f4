#!/usr/bin/env python3
"""A stand-in for systemd's service manager, for tests (systemd cannot be PID 1 here).

Runs one service (the command after ``--``) as systemd runs a ``Type=notify-reload`` unit, and reports what
it sees as JSON lines on stdout, one event each:

- a datagram ``NOTIFY_SOCKET`` (abstract, as systemd's) with ``SO_PASSCRED``: every message is recorded with
  its sender's pid (from the kernel) and whether the sender was the main process (``NotifyAccess=main``:
  only those count);
- ``MAINPID=`` from the main process moves "main" to that pid when it is the sender's child (systemd: in the
  unit's cgroup); this process is a child subreaper, so a main process whose parent exited is still its child;
- ``WATCHDOG_USEC`` (``--watchdog-usec``; ``WATCHDOG_PID`` the service's pid) and ``FDSTORE``
  (``--fdstore``): ``FDSTORE=1`` fds are kept by name (one copy of a socket already kept), ``FDSTOREREMOVE=1``
  drops them;
- sockets passed as fds 3… with ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES``: a socket unit's
  (``--listen ADDR --sockets N [--reuseport]``), then the fd store's;
- when the main process dies of a signal or exits non-zero (``Restart=on-failure``): what is left of the
  service gets ``KillMode=`` treatment (``mixed``: SIGKILL; ``control-group``: SIGTERM, then wait), and after
  ``--restart-sec`` the service starts again with the socket unit's sockets and the fd store;
- when the main process exits 0, the service is stopped: what is left is killed (SIGKILL, as ``mixed`` does
  after the main process exits), the fd store is released, and this process exits.

Events: ``start`` (pid, fds), ``notify`` (pid, main, fields, fds, t = CLOCK_MONOTONIC µs), ``mainpid``,
``exit`` (pid, main, code or signal), ``killed`` (pids, signal), ``stopped``. The service's stdio is this
process's (stderr: its log). Bounded: the manager gives up after ``--limit`` seconds (SIGKILL to all).
"""

from __future__ import annotations

import argparse
import array
import ctypes
import json
import select
import os
import signal
import socket
import struct
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
SCM_CREDENTIALS = 2
SO_PASSCRED = 16
LOCK = threading.Lock()


def emit(event: str, **fields) -> None:
    with LOCK:
        sys.stdout.write(json.dumps({"event": event, "t": now_usec(), **fields}) + "\n")
        sys.stdout.flush()


def now_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ppid(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> list[int]:
    """Every live process below `root` (this manager): the service's processes, as its cgroup would hold."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = ppid(int(name))
            if p is not None:
                children.setdefault(p, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Manager:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.main: int | None = None
        self.store: list[tuple[str, int]] = []  # (name, fd), in push order
        self.units: list[socket.socket] = []  # the socket unit's sockets
        self.lock = threading.Lock()
        # Held while a notify message is received and handled: the reap loop takes it to handle what is
        # queued before it reports an exit (systemd, too, reads the notify socket before SIGCHLD), so a
        # MAINPID= sent just before the old main process exits is never seen after its exit.
        self.notify_lock = threading.Lock()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
        self.notify_name = f"port-sharding-test-manager-{os.getpid()}-{time.monotonic_ns()}"
        self.notify.bind("\0" + self.notify_name)
        for _ in range(args.sockets):
            host, port = args.listen.rsplit(":", 1)
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            if args.reuseport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host.strip("[]"), int(port)))
            s.listen(128)
            args.listen = f"{host}:{s.getsockname()[1]}"  # port 0: the others join the first's port
            self.units.append(s)
        if self.units:
            emit("listening", addr=args.listen, sockets=len(self.units))

    # --- the service -------------------------------------------------------------------------------------

    def start(self) -> None:
        passed = [(self.args.fdname, s.fileno()) for s in self.units] + list(self.store)
        high = [fcntl_dupfd(fd, 200) for _, fd in passed]
        actions = [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(high)]
        env = dict(os.environ, NOTIFY_SOCKET="@" + self.notify_name)
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE"):
            env.pop(k, None)
        if passed:
            env["LISTEN_FDS"] = str(len(passed))
            env["LISTEN_FDNAMES"] = ":".join(name for name, _ in passed)
        if self.args.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.args.watchdog_usec)
        if self.args.fdstore:
            env["FDSTORE"] = str(self.args.fdstore)
        # LISTEN_PID and WATCHDOG_PID name the process that reads them: sh's pid is the program's after exec.
        script = 'export LISTEN_PID=$$ WATCHDOG_PID=$$; [ -n "$LISTEN_FDS" ] || unset LISTEN_PID; ' \
                 '[ -n "$WATCHDOG_USEC" ] || unset WATCHDOG_PID; exec env --default-signal=INT,QUIT "$@"'
        argv = ["sh", "-c", script, "sh", *self.args.command]
        pid = os.posix_spawnp("sh", argv, env, file_actions=actions, setpgroup=0)
        for fd in high:
            os.close(fd)
        with self.lock:
            self.main = pid
        emit("start", pid=pid, fds=[name for name, _ in passed])

    def leftovers(self) -> list[int]:
        return [p for p in descendants(os.getpid())]

    def kill_left(self, sig: int) -> list[int]:
        pids = self.leftovers()
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        if pids:
            emit("killed", pids=pids, signal=signal.Signals(sig).name)
        return pids

    def wait_left(self, limit: float) -> None:
        until = time.monotonic() + limit
        while self.leftovers() and time.monotonic() < until:
            self.reap()
            time.sleep(0.01)
        self.kill_left(signal.SIGKILL)

    def reap(self) -> list[tuple[int, int]]:
        out = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return out
            if pid == 0:
                return out
            out.append((pid, status))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_service())
        threading.Thread(target=self.listen, daemon=True).start()
        self.start()
        deadline = time.monotonic() + self.args.limit
        while time.monotonic() < deadline:
            exited = self.reap()
            if exited:
                self.notified_first()
            for pid, status in exited:
                with self.lock:
                    main = pid == self.main
                code = os.waitstatus_to_exitcode(status)
                emit("exit", pid=pid, main=main, code=code)
                if not main:
                    continue
                with self.lock:
                    self.main = None
                if code != 0 and self.args.restart == "on-failure":
                    if self.args.kill_mode == "control-group":
                        self.kill_left(signal.SIGTERM)
                        self.wait_left(self.args.timeout_stop)
                    else:
                        self.kill_left(signal.SIGKILL)
                        self.wait_left(self.args.timeout_stop)
                    time.sleep(self.args.restart_sec)
                    self.start()
                    continue
                # Stopped (or failed for good): what is left goes, and so does the fd store.
                self.kill_left(signal.SIGKILL)
                self.wait_left(5)
                emit("stopped", code=code, stored=[name for name, _ in self.store])
                return 0
            time.sleep(0.005)
        emit("gave-up", limit=self.args.limit)
        self.kill_left(signal.SIGKILL)
        return 1

    def stop_service(self) -> None:
        with self.lock:
            main = self.main
        if main:
            os.kill(main, signal.SIGTERM)

    # --- NOTIFY_SOCKET -----------------------------------------------------------------------------------

    def listen(self) -> None:
        while True:
            select.select([self.notify], [], [], 0.1)
            self.notified_first()

    def notified_first(self) -> None:
        """Handles every notify message already queued (without waiting for more)."""
        with self.notify_lock:
            while self.handle_one():
                pass

    def handle_one(self) -> bool:
        fd_size = array.array("i").itemsize
        try:
            data, ancdata, _flags, _addr = self.notify.recvmsg(
                4096, socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(64 * fd_size),
                socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        pid, fds = None, []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % fd_size])
                fds.extend(arr)
        fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
        with self.lock:
            main = pid is not None and pid == self.main
        emit("notify", pid=pid, main=main, fields=fields, fds=len(fds))
        if not main:  # NotifyAccess=main: everyone else is ignored
            for fd in fds:
                os.close(fd)
            return True
        if "MAINPID" in fields:
            new = int(fields["MAINPID"])
            if ppid(new) == pid or ppid(new) == os.getpid():  # in the unit: its child
                with self.lock:
                    self.main = new
                emit("mainpid", old=pid, pid=new)
            else:
                emit("mainpid-refused", old=pid, pid=new)
        if fields.get("FDSTOREREMOVE") == "1":
            name = fields.get("FDNAME")
            with self.lock:
                gone = [fd for n, fd in self.store if n == name]
                self.store = [(n, fd) for n, fd in self.store if n != name]
            for fd in gone:
                os.close(fd)
            emit("fdstore-remove", name=name, removed=len(gone))
        elif fields.get("FDSTORE") == "1":
            name = fields.get("FDNAME", "stored")
            for fd in fds:
                ident = os.fstat(fd)
                with self.lock:
                    known = any((os.fstat(f).st_dev, os.fstat(f).st_ino) == (ident.st_dev, ident.st_ino)
                                for _, f in self.store)
                    full = len(self.store) >= self.args.fdstore
                    if not known and not full:
                        self.store.append((name, fd))
                if known or full:
                    os.close(fd)
                emit("fdstore", name=name, kept=not known and not full)
        else:
            for fd in fds:
                os.close(fd)
        return True


def fcntl_dupfd(fd: int, at_least: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, at_least)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="address of the socket unit's sockets")
    p.add_argument("--sockets", type=int, default=0, help="how many ListenStream= sockets (0: none)")
    p.add_argument("--reuseport", action="store_true", help="ReusePort=yes")
    p.add_argument("--fdname", default="app.socket", help="FileDescriptorName= of the socket unit")
    p.add_argument("--watchdog-usec", type=int, default=0)
    p.add_argument("--fdstore", type=int, default=0, help="FileDescriptorStoreMax=")
    p.add_argument("--kill-mode", choices=["mixed", "control-group"], default="mixed")
    p.add_argument("--restart", choices=["on-failure", "no"], default="on-failure")
    p.add_argument("--restart-sec", type=float, default=0.1)
    p.add_argument("--timeout-stop", type=float, default=30.0)
    p.add_argument("--limit", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument("command", nargs="+")
    args = p.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("service_manager: cannot become a child subreaper", file=sys.stderr)
        return 2
    return Manager(args).run()


if __name__ == "__main__":
    sys.exit(main())
