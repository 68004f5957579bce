#!/usr/bin/env python3
"""Issue 9's history attack against a real confab binary: members that never read ask for
`history 500` at the allowed rate (burst 50, then 20/s). Prints the coordinator's RSS growth.

usage: tests/tools/history-attack.py BINARY [members] [seconds]   (a release binary: cargo build --release)
"""
import json, os, signal, socket, subprocess, sys, tempfile, threading, time

binary = sys.argv[1]
members = int(sys.argv[2]) if len(sys.argv) > 2 else 1
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]; s.close(); return p

def start(db, port, *extra):
    p = subprocess.Popen([binary, "coordinator", "--fast-passwords", "--listen", f"127.0.0.1:{port}",
                          "--db", db, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p

rid = [0]
def request(port, **body):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
    rid[0] += 1; body["id"] = rid[0]
    for _ in range(40):
        # Padded with spaces: a coordinator may refuse small requests (anti-amplification).
        s.sendto(json.dumps(body).ljust(400).encode(), ("127.0.0.1", port))
        try:
            return json.loads(s.recv(4096))
        except socket.timeout:
            pass
    raise SystemExit(f"no answer to {body['op']}")

def token(port, user):
    request(port, op="register", user=user, password="pw")
    return request(port, op="login", user=user, password="pw")["token"]

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def hello(user, tok, history=None):
    h = {"type": "hello", "user": user, "token": tok, "udp": "127.0.0.1:9"}
    if history: h["history"] = history
    return (json.dumps(h) + "\n").encode()

tmp = tempfile.mkdtemp(); db = os.path.join(tmp, "confab.db"); port = free_port()
# Seed: 1000 lines of 4000 bytes, said with the rate limit off.
p = start(db, port, "--no-rate-limit")
tok = token(port, "alice")
server = request(port, op="create", name="big", token=tok)["session"]["server"]
host, sport = server.rsplit(":", 1)
c = socket.create_connection((host, int(sport)))
c.sendall(hello("alice", tok))
drain = threading.Thread(target=lambda: [None for _ in iter(lambda: c.recv(1 << 20), b"")], daemon=True)
drain.start()
for i in range(1000):
    c.sendall((json.dumps({"type": "say", "text": f"{i:04d}" + "x" * 3996}) + "\n").encode())
time.sleep(2)
p.send_signal(signal.SIGINT); p.wait(timeout=20)

# Attack, at the default rate limit.
p = start(db, port)
server = request(port, op="join", session="big", token=token(port, "alice"))["session"]["server"]
host, sport = server.rsplit(":", 1)
socks = []
for m in range(members):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(sport))); s.sendall(hello(f"mallory{m}", token(port, f"mallory{m}"))); s.setblocking(False)
    socks.append(s)
time.sleep(0.5)
before = rss(p.pid); peak = before; asked = 0; began = time.time()
ask = b'{"type":"history","limit":500}\n'
while time.time() - began < seconds:
    for s in socks:
        try:
            s.send(ask)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
    asked += 1
    time.sleep(0.001 if asked < 50 else 0.05)
    peak = max(peak, rss(p.pid))
print(f"{binary}: {members} member(s) that never read, {asked} history 500 requests each in {seconds:.0f} s: "
      f"RSS {before >> 20} MiB -> peak {peak >> 20} MiB (+{(peak - before) >> 20} MiB)")
p.send_signal(signal.SIGINT)
try:
    p.wait(timeout=15)
except subprocess.TimeoutExpired:
    p.kill()
