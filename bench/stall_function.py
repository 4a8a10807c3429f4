#!/usr/bin/env python3
"""One stall under load for Python function workers (issue 22): `port_sharding.serve(workers=2, worker=KIND,
steering=on|off)` on 127.0.0.1, 8 client threads of connect / 16-byte echo / close with 1 s timeouts; 1 s in,
worker 1 gets SIGSTOP for 4 s. KIND: `counted` (`for client, addr in listener`) or `aio` (asyncio on
`listener.socket`, counted by nobody). Prints the clients' counts. Needs the package installed (make setup-python).

    python3 bench/stall_function.py counted|aio on|off
"""
import os, signal, socket, subprocess, sys, threading, time, re, tempfile
kind, steering = sys.argv[1], sys.argv[2] == "on"
CHILD = r'''
import asyncio, sys
import port_sharding
def counted(listener):
    for client, addr in listener:
        client.sendall(client.recv(1024)); client.close()
async def aio(listener):
    async def handle(reader, writer):
        writer.write(await reader.read(1024)); await writer.drain(); writer.close()
    server = await asyncio.start_server(handle, sock=listener.socket)
    listener.ready()
    await listener.wait_draining()
port_sharding.serve(0, host="127.0.0.1", workers=2, worker=globals()[sys.argv[1]], steering=sys.argv[2] == "on")
'''
d = tempfile.mkdtemp(); os.chmod(d, 0o700)
p = subprocess.Popen([sys.executable, "-c", CHILD, kind, sys.argv[2]], stderr=subprocess.PIPE, text=True,
                     env=dict(os.environ, PORT_SHARDING_CONTROL_DIR=d), start_new_session=True)
lines = []
threading.Thread(target=lambda: [lines.append(l) for l in p.stderr], daemon=True).start()
deadline = time.monotonic() + 30
while not any("ready:" in l for l in lines) and time.monotonic() < deadline: time.sleep(0.01)
port = int(re.search(r"serving 127\.0\.0\.1:(\d+)", "".join(lines)).group(1))
pids = [int(m) for m in re.findall(r"started: pid (\d+)", "".join(lines))]
stop = threading.Event(); c = {"ok": 0, "to": 0, "err": 0}
def client():
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(1); s.sendall(b"0123456789abcdef"); c["ok" if s.recv(100) else "err"] += 1
        except socket.timeout: c["to"] += 1
        except OSError: c["err"] += 1
ts = [threading.Thread(target=client) for _ in range(8)]; [t.start() for t in ts]
time.sleep(1); os.kill(pids[1], signal.SIGSTOP); time.sleep(4); os.kill(pids[1], signal.SIGCONT); time.sleep(1.5)
stop.set(); [t.join() for t in ts]
print(kind, "steering", sys.argv[2], c)
os.killpg(p.pid, signal.SIGTERM); p.wait(20)
