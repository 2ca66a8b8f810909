#!/usr/bin/env python3
"""The kernel's price of one small write to a loopback TCP socket on this machine: the floor
under any server that writes each delivery on its own (no batching), whatever its language.

One process writes a 160-byte message (a MESSAGE frame's size) to each of 250 accepted
connections in turn (as one instance does for one message to 250 subscribers), ROUNDS times,
with GAP seconds between rounds; another process reads them all. Prints the writer's system
and user CPU per write and the reader's CPU per message, from getrusage.

Usage: bench/floor.py [ROUNDS] [GAP]    (defaults: 400 rounds, 0.01 s: 100 msg/s as in
the fan-out scenario; GAP 0 writes back to back)
"""

import os
import resource
import selectors
import socket
import sys
import time

CONNS = 250
MSG = b"x" * 160


def reader(port, want):
    sel = selectors.DefaultSelector()
    for _ in range(CONNS):
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
    got = 0
    while got < want:
        for key, _ in sel.select():
            try:
                got += len(key.fileobj.recv(65536))
            except BlockingIOError:
                pass


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    gap = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        reader(port, CONNS * rounds * len(MSG))
        os._exit(0)
    conns = []
    for _ in range(CONNS):
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(s)
    time.sleep(0.5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(rounds):
        for s in conns:
            s.sendall(MSG)
        if gap:
            time.sleep(gap)
    after = resource.getrusage(resource.RUSAGE_SELF)
    os.waitpid(pid, 0)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = CONNS * rounds
    us = 1e6 / n
    print(
        f"{n} writes of {len(MSG)} B to {CONNS} loopback sockets, {gap * 1000:g} ms between rounds: "
        f"writer system {(after.ru_stime - before.ru_stime) * us:.2f} us/write, "
        f"user {(after.ru_utime - before.ru_utime) * us:.2f} us/write; "
        f"reader {(child.ru_stime + child.ru_utime) * us:.2f} us/message"
    )


if __name__ == "__main__":
    main()
