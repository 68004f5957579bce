#!/usr/bin/env python3
"""Issue 9, the coordinator's UDP edge, measured from outside against a release binary.

usage: tests/tools/measure-edge.py BINARY SCENARIO [extra coordinator flags...]

SCENARIO: leak, strict, amplification, memory, memory512, cache, sessions, registrations,
guesses (GUESS_SECONDS, default 10), descriptors (soft=hard=1024), descriptors4096 (1024/4096).
Each starts its own `BINARY coordinator --db :memory:` on 127.0.0.1:0 and kills it at the end;
some bind 127.0.0.2 and 127.0.0.10-25, which Linux routes on loopback. Works against binaries
from before issue 9 too (their requests are padded, which they ignore), so the same command
gives the before and after figures.
"""
import json, os, resource, socket, subprocess, sys, threading, time

BIN = sys.argv[1]
SCEN = sys.argv[2]
EXTRA = sys.argv[3:]
PAD = 400


def start(extra=(), nofile=None):
    def pre():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    p = subprocess.Popen([BIN, "coordinator", "--listen", "127.0.0.1:0", "--print-addr",
                          "--db", ":memory:", *EXTRA, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         env={**os.environ, "RUST_LOG": "error"}, preexec_fn=pre)
    host, port = p.stdout.readline().decode().strip().rsplit(":", 1)
    return p, (host, int(port))


def rss(p):
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) // 1024


def sock(ip="127.0.0.1", port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    return s


def pad(b):
    return b + b" " * max(0, PAD - len(b))


def ask(s, addr, req, padded=True, timeout=5.0):
    b = json.dumps(req).encode() if isinstance(req, dict) else req
    if padded:
        b = pad(b)
    s.settimeout(timeout)
    s.sendto(b, addr)
    try:
        data, _ = s.recvfrom(65536)
        return json.loads(data), len(data)
    except socket.timeout:
        return None, 0


def retry_ask(s, addr, req, tries=40):
    for i in range(tries):
        v, n = ask(s, addr, req, timeout=0.5)
        if v is not None and v.get("code") != "busy":
            return v
        time.sleep(0.2)
    return None


def token(addr, user, s=None):
    s = s or sock()
    retry_ask(s, addr, {"id": 1, "op": "register", "user": user, "password": "pw-" + user})
    v = retry_ask(s, addr, {"id": 2, "op": "login", "user": user, "password": "pw-" + user})
    return v["token"]


def leak():
    p, addr = start()
    a = sock()
    port = a.getsockname()[1]
    print("A register alice:", ask(a, addr, {"id": 1, "op": "register", "user": "alice", "password": "alice-pw"})[0])
    print("A login alice:", ask(a, addr, {"id": 2, "op": "login", "user": "alice", "password": "alice-pw"})[0])
    a.close()
    b = sock(port=port)
    print("B register bob, id 1:", ask(b, addr, {"id": 1, "op": "register", "user": "bob", "password": "bob-pw"})[0])
    print("B login mallory (wrong password), id 2:", ask(b, addr, {"id": 2, "op": "login", "user": "mallory", "password": "guess"})[0])
    p.kill()


def strict():
    p, addr = start()
    s = sock()
    for op in (0, 1, 5):
        print(f'op {op}:', ask(s, addr, b'{"id":%d,"op":%d,"user":"zed%d","password":"pw"}' % (op, op, op))[0])
    p.kill()


def amplification():
    p, addr = start()
    s = sock()
    t = token(addr, "alice", s)
    for i in range(12):
        retry_ask(s, addr, {"id": 100 + i, "op": "create", "name": f"a-long-session-name-for-a-large-listing-{i}", "token": t})
    for probe in [b"x", b'{"id":4,"op":"list"}', b"z" * 100, pad(b'{"id":5,"op":"list"}')]:
        s.settimeout(0.5)
        s.sendto(probe, addr)
        try:
            data, _ = s.recvfrom(65536)
            print(f"{len(probe):4} B sent -> {len(data):4} B answered ({len(data)/len(probe):.1f}x): {data[:70]!r}")
        except socket.timeout:
            print(f"{len(probe):4} B sent -> no answer")
    # Answers per second to one address: 2 s of lists as fast as one sender goes.
    for padded in (False, True):
        f = sock()
        got = [0, 0]
        stop = time.time() + 2.0

        def rx():
            f.settimeout(0.3)
            while True:
                try:
                    d, _ = f.recvfrom(65536)
                    got[0] += 1
                    got[1] += len(d)
                except socket.timeout:
                    if time.time() > stop:
                        return
        th = threading.Thread(target=rx)
        th.start()
        sent = sentb = 0
        i = 0
        while time.time() < stop:
            b = b'{"id":%d,"op":"list"}' % i
            if padded:
                b = pad(b)
            try:
                f.sendto(b, addr)
                sent += 1
                sentb += len(b)
            except BlockingIOError:
                pass
            i += 1
        th.join()
        kind = "400-byte padded" if padded else "unpadded ~22-byte"
        print(f"{kind} lists for 2 s: sent {sent} ({sentb/2/1e6:.2f} MB/s), answered {got[0]} = {got[0]/2:.0f}/s, {got[1]/2/1e6:.2f} MB/s reflected")
    p.kill()


def memory(n=128, addrs=4):
    p, addr = start()
    s = sock()
    retry_ask(s, addr, {"id": 1, "op": "register", "user": "real", "password": "real-password"})
    retry_ask(s, addr, {"id": 2, "op": "login", "user": "nobody", "password": "x"})
    time.sleep(0.3)
    base = rss(p)
    floods = [sock(f"127.0.0.{10 + a}") for a in range(addrs)]
    for i in range(n):
        if i % 2 == 0:
            req = {"id": i, "op": "login", "user": f"guess{i}", "password": "pw"}
        else:
            req = {"id": i, "op": "register", "user": f"new{i}", "password": "pw"}
        floods[i % addrs].sendto(pad(json.dumps(req).encode()), addr)
    peak = [base]
    done = [False]

    def sample():
        while not done[0]:
            peak[0] = max(peak[0], rss(p))
            time.sleep(0.01)
    th = threading.Thread(target=sample)
    th.start()
    real = sock("127.0.0.2")
    t0 = time.time()
    v = retry_ask(real, addr, {"id": 7, "op": "login", "user": "real", "password": "real-password"}, tries=100)
    took = time.time() - t0
    answers = {}
    for f in floods:
        f.settimeout(0.5)
        while True:
            try:
                d, _ = f.recvfrom(65536)
                j = json.loads(d)
                k = j.get("code") or j.get("type")
                answers[k] = answers.get(k, 0) + 1
            except socket.timeout:
                break
    time.sleep(8)
    done[0] = True
    th.join()
    after = rss(p)
    print(f"{n} login/register datagrams from {addrs} addresses: RSS {base} MiB -> peak {peak[0]} MiB -> {after} MiB 8 s later; "
          f"real login {'ok' if v and v.get('token') else v} in {took:.2f} s; answers {answers}")
    p.kill()


def sessions(attempts=3000):
    p, addr = start()
    s = sock()
    t = token(addr, "mallory", s)
    made, first_err = 0, None
    t0 = time.time()
    for i in range(attempts):
        v, _ = ask(s, addr, {"id": 1000 + i, "op": "create", "token": t})
        if v and v.get("type") == "session":
            made += 1
        elif v and first_err is None:
            first_err = (made, v.get("code"), v.get("message"))
    dt = time.time() - t0
    b = sock("127.0.0.2")
    tb = token(addr, "bob", b)
    print(f"one account, {attempts} creates in {dt:.2f} s: {made} sessions; first refusal after {first_err}")
    print("then bob:", ask(b, addr, {"id": 9, "op": "create", "token": tb})[0].get("type"))
    p.kill()


def registrations(attempts=200):
    p, addr = start()
    s = sock()
    ok, codes = 0, {}
    t0 = time.time()
    for i in range(attempts):
        v = retry_ask(s, addr, {"id": i, "op": "register", "user": f"bot{i}", "password": "pw"})
        k = v.get("code") or v.get("type")
        codes[k] = codes.get(k, 0) + 1
    print(f"{attempts} registrations from one address in {time.time()-t0:.2f} s: {codes}")
    p.kill()


def guesses(seconds=10, names=100):
    seconds = int(os.environ.get("GUESS_SECONDS", seconds))
    # 100 accounts from one address need the registration quota off, where there is one.
    help_text = subprocess.run([BIN, "coordinator", "--help"], capture_output=True, text=True).stdout
    p, addr = start(("--registrations-per-hour", "0") if "registrations-per-hour" in help_text else ())
    s = sock()
    for i in range(names):
        retry_ask(s, addr, {"id": i, "op": "register", "user": f"user{i}", "password": "right"})
    g = sock("127.0.0.3")
    checked, codes = 0, {}
    t0 = time.time()
    r = 0
    while time.time() - t0 < seconds:
        for i in range(names):
            g.sendto(pad(json.dumps({"id": 100000 * (r + 1) + i, "op": "login", "user": f"user{i}", "password": f"guess{r}"}).encode()), addr)
        g.settimeout(1.0)
        end = time.time() + 1.0
        while time.time() < end:
            try:
                d, _ = g.recvfrom(65536)
                j = json.loads(d)
                k = j.get("code") or j.get("type")
                codes[k] = codes.get(k, 0) + 1
            except socket.timeout:
                break
        r += 1
    print(f"{r} parallel bursts of {names} guesses (one per name) from one address over {time.time()-t0:.1f} s: {codes}")
    p.kill()


def descriptors(soft=1024, hard=1024):
    p, addr = start(nofile=(soft, hard))
    lim = [l for l in open(f"/proc/{p.pid}/limits") if l.startswith("Max open files")][0].split()[3:5]
    s = sock()
    t = token(addr, "alice", s)
    made, first_err, errs = [], None, {}
    for i in range(hard * 2):
        v, _ = ask(s, addr, {"id": 1000 + i, "op": "create", "token": t}, timeout=2)
        if v and v.get("type") == "session":
            made.append(v["session"]["server"])
        else:
            k = v.get("code") if v else "no answer"
            errs[k] = errs.get(k, 0) + 1
            if first_err is None:
                first_err = (len(made), v)
            if sum(errs.values()) >= 20:
                break
    # Page through the listing.
    listed = without_server = 0
    cursor = 0
    while True:
        v, _ = ask(s, addr, {"id": 900000 + cursor, "op": "list", "cursor": cursor})
        for e in v["sessions"]:
            listed += 1
            without_server += "server" not in e
        if "next" not in v:
            break
        cursor = v["next"]
    # Can an existing session still admit a member?
    host, port = made[0].rsplit(":", 1)
    c = socket.create_connection((host, int(port)), timeout=3)
    c.sendall((json.dumps({"type": "hello", "user": "alice", "token": t, "udp": "127.0.0.1:9"}) + "\n").encode())
    try:
        line = c.makefile().readline()
        hello = json.loads(line)["type"] if line else "closed"
    except Exception as e:
        hello = f"no answer ({e})"
    print(f"open files {lim[0]}/{lim[1]} (started {soft}/{hard}): {len(made)} sessions; first refusal {first_err}; "
          f"refusals {errs}; listed {listed} ({without_server} without a server); hello to the first session: {hello}")
    p.kill()


def cache(n=100000):
    p, addr = start()
    s = sock()
    t = token(addr, "alice", s)
    time.sleep(0.3)
    base = rss(p)
    s.setblocking(False)
    sent = 0
    t0 = time.time()
    for i in range(n):
        b = json.dumps({"id": 10 + i, "op": "close", "session": "n" * 1000, "token": t}).encode()
        while True:
            try:
                s.sendto(b, addr)
                break
            except BlockingIOError:
                time.sleep(0.0005)
        sent += 1
        if i % 64 == 0:
            try:
                while True:
                    s.recvfrom(65536)
            except BlockingIOError:
                pass
    time.sleep(1)
    print(f"{sent} closes with 1000-character names in {time.time()-t0:.1f} s: RSS {base} MiB -> {rss(p)} MiB")
    p.kill()


def memory512():
    memory(512, 16)


def descriptors4096():
    descriptors(1024, 4096)


globals()[SCEN]()
