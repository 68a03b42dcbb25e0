# A hostile FdChannel peer, written without the library: raw AF_UNIX SOCK_SEQPACKET sendmsg(2)
# with SCM_RIGHTS from Python. argv[1] is the plan (JSON): { mode, steps, seed, maxPayload, depth,
# flood, path }. In the channel modes fd 3 is its socket; fds 4 and 5, when given, are a
# guest_memfd (made without INIT_SHARED) and a VM fd of the receiver's. It prints one JSON line.
import array
import json
import os
import random
import select
import signal
import socket
import sys

plan = json.loads(sys.argv[1])
rng = random.Random(plan["seed"])
MAX_PAYLOAD = plan["maxPayload"]
report = {"sent": 0}


def rights(fds):
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def send(s, data, fds=(), anc=None):
    s.sendmsg([data], anc if anc is not None else rights(list(fds)))
    report["sent"] += 1


def wait_ack(s):
    if not s.recv(64):
        sys.exit(0)  # the receiver is gone


def devnull(n):
    return [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]


def close_all(fds):
    for f in fds:
        os.close(f)


def every_kind(s):
    """One fd of every kind this process can make, with names in the same order."""
    made = []
    r, w = os.pipe()
    made += [("pipe-read", r), ("pipe-write", w)]
    made.append(("devnull", os.open("/dev/null", os.O_RDWR)))
    made.append(("memfd", os.memfd_create("hostile", 0)))  # not close-on-exec here
    x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    y.close()
    made.append(("unix-stream", x.detach()))
    made.append(("tcp", socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach()))
    made.append(("udp", socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()))
    made.append(("eventfd", os.eventfd(0)))
    made.append(("directory", os.open("/", os.O_RDONLY | os.O_DIRECTORY)))
    made.append(("o-path", os.open("/etc", os.O_PATH)))
    ep = select.epoll()
    made.append(("epoll", os.dup(ep.fileno())))
    ep.close()
    made.append(("own-socket", os.dup(s.fileno())))
    if os.path.exists("/dev/kvm"):
        made.append(("kvm", os.open("/dev/kvm", os.O_RDWR)))
    return made


def step(s, name):
    if name == "garbage":  # bytes that are not UTF-8, with fds
        fds = devnull(2)
        send(s, bytes([0xFF, 0xFE]) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512))), fds)
        close_all(fds)
    elif name == "not-json":
        fds = devnull(1)
        send(s, b"{nope", fds)
        close_all(fds)
    elif name == "bom":
        send(s, '\ufeff"x"'.encode())
    elif name == "surrogate":  # CESU-8 of a lone surrogate: not valid UTF-8
        send(s, b'"\xed\xa0\x80"', devnull(1))
    elif name == "overlong":  # an overlong NUL
        send(s, b'"\xc0\x80"')
    elif name == "huge":  # past MAX_PAYLOAD, with fds
        fds = devnull(3)
        send(s, b" " * MAX_PAYLOAD + b"1", fds)
        close_all(fds)
    elif name == "huger":
        send(s, b"[" + b"0," * 90000 + b"0]", devnull(2))
    elif name == "exact-max":  # a JSON string of exactly MAX_PAYLOAD bytes
        send(s, b'"' + b"a" * (MAX_PAYLOAD - 2) + b'"')
    elif name == "deep":
        send(s, b"[" * 30000 + b"]" * 30000, devnull(1))
    elif name == "deep-ok":
        d = plan["depth"]
        send(s, b"[" * d + b"]" * d)
    elif name == "proto-keys":
        send(s, b'{"__proto__":{"polluted":1},"constructor":{"prototype":{"polluted":1}}}')
    elif name == "fds-65":
        fds = devnull(65)
        send(s, b'"65"', fds)
        close_all(fds)
    elif name in ("fds-253", "fds-253-default"):
        fds = devnull(253)
        send(s, b'"253"', fds)
        close_all(fds)
    elif name == "fds-over-max0":
        fds = devnull(1)
        send(s, b'"1"', fds)
        close_all(fds)
    elif name == "two-cmsgs":  # two SCM_RIGHTS control messages in one sendmsg
        a, b = devnull(2)
        send(s, b'"two"', anc=rights([a, b]) + rights([a]))
        close_all([a, b])
    elif name == "every-kind":
        made = every_kind(s)
        send(s, json.dumps({"names": [n for n, _ in made]}).encode(), [f for _, f in made])
        close_all([f for _, f in made])
    elif name == "empty-with-fds":
        fds = devnull(2)
        send(s, b"", fds)
        close_all(fds)
    elif name == "empty":  # 0 bytes, no fds, from a peer that stays
        send(s, b"")
    elif name == "vm-fd":
        send(s, b'{"what":"vm"}', [5])
    elif name == "false-shared":  # a guest_memfd made without INIT_SHARED, claimed with it
        size = os.fstat(4).st_size
        send(s, json.dumps({"size": size, "flags": 3}).encode(), [4])
    elif name == "flood":  # many messages with an fd each, without waiting
        null = os.open("/dev/null", os.O_RDONLY)
        for i in range(plan["flood"]):
            send(s, json.dumps({"i": i}).encode(), [null])
        os.close(null)
    else:
        raise SystemExit("unknown step " + name)


mode = plan["mode"]
if mode == "channel":
    s = socket.socket(fileno=3)
    for name in plan["steps"]:
        step(s, name)
        wait_ack(s)
elif mode == "close-mid-stream":  # K messages with fds, then gone without waiting
    s = socket.socket(fileno=3)
    null = os.open("/dev/null", os.O_RDONLY)
    for i in range(plan["flood"]):
        send(s, json.dumps({"i": i}).encode(), [null])
    s.close()
elif mode == "killed-mid-stream":  # K messages with fds, the receiver's message unread, then SIGKILL
    s = socket.socket(fileno=3)
    select.select([s], [], [])  # the receiver's message is queued here, and stays unread
    null = os.open("/dev/null", os.O_RDONLY)
    for i in range(plan["flood"]):
        send(s, json.dumps({"i": i}).encode(), [null])
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "flood-forever":  # until the receiver closes its end
    s = socket.socket(fileno=3)
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        while True:
            send(s, json.dumps({"i": report["sent"]}).encode(), [null])
    except (BrokenPipeError, ConnectionResetError) as e:
        report["ended"] = type(e).__name__
elif mode == "listener":
    path = plan["path"]

    def connect(kind=socket.SOCK_SEQPACKET):
        c = socket.socket(socket.AF_UNIX, kind)
        c.connect(path)
        return c

    for _ in range(3):  # connect and hang up at once
        connect().close()
    garbage = connect()
    send(garbage, b"\xff\x00garbage", devnull(1))
    try:  # a stream socket at a SEQPACKET path
        connect(socket.SOCK_STREAM).close()
        report["stream"] = "connected"
    except OSError as e:
        report["stream"] = e.__class__.__name__
    held = []
    for _ in range(plan["flood"]):  # more connections than the backlog, none of them used
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.setblocking(False)
        try:
            c.connect(path)
            held.append(c)
        except OSError:
            c.close()
    report["held"] = len(held)
    print(json.dumps(report), flush=True)  # the receiver accepts `held` more, then acks
    wait_ack(garbage)
    sys.exit(0)
print(json.dumps(report), flush=True)
