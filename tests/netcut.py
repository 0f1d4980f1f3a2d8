"""A TCP proxy in front of a broker that a test can cut or partition, on loopback only.

The broker binds 127.0.0.1:P..P+3; the proxy listens on 127.0.0.2:P..P+3 (the whole of
127.0.0.0/8 is loopback on Linux) and forwards each connection to the same port on
127.0.0.1. Clients given tcp://127.0.0.2:P reach every broker socket through it, because
the broker hands out port numbers and clients keep the host they were given.

- cut(): every open connection is reset (RST on both sides), as a restarted NAT or
  firewall does; clients must reconnect by themselves.
- partition(s): for s seconds nothing moves in either direction and new connections wait,
  as when a cable is pulled; heartbeats time out on both ends.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time


class Proxy:
    def __init__(self, ports: list[int], listen_host: str = "127.0.0.2", target_host: str = "127.0.0.1"):
        self.target_host = target_host
        self.listeners = []
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((listen_host, port))
            s.listen(64)
            s.setblocking(False)
            self.listeners.append(s)
        self.pairs: dict[socket.socket, socket.socket] = {}  # each end -> the other
        self.out: dict[socket.socket, bytes] = {}  # bytes waiting to be written to each end
        self.blocked_until = 0.0
        self.cuts = 0
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def connections(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return len(self.pairs) // 2

    def cut(self) -> int:
        """Reset every open connection; return how many were cut."""
        with self._lock:
            ends = list(self.pairs)
            for end in ends:
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                end.close()
            self.pairs.clear()
            self.out.clear()
            self.cuts += 1
        return len(ends) // 2

    def partition(self, seconds: float) -> None:
        """Stop forwarding for ``seconds`` (returns at once)."""
        self.blocked_until = time.monotonic() + seconds

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        with self._lock:
            for s in [*self.pairs, *self.listeners]:
                s.close()
            self.pairs.clear()

    def _loop(self) -> None:
        # Non-blocking, one bounded buffer per direction: a side that reads nothing (the broker's
        # ingest held back by its rate limiter) holds the other back, as a direct connection would.
        while not self._stop:
            if time.monotonic() < self.blocked_until:
                time.sleep(0.02)  # partitioned: read nothing, write nothing, accept nothing
                continue
            with self._lock:
                sel = selectors.DefaultSelector()
                for s in self.listeners:
                    sel.register(s, selectors.EVENT_READ)
                for end, other in self.pairs.items():
                    events = (selectors.EVENT_READ if not self.out[other] else 0) | \
                             (selectors.EVENT_WRITE if self.out[end] else 0)
                    if events:
                        sel.register(end, events)
            ready = sel.select(0.02) if sel.get_map() else []
            sel.close()
            with self._lock:
                for key, events in ready:
                    s = key.fileobj
                    if s in self.listeners:
                        self._accept(s)
                    elif s in self.pairs:
                        self._pump(s, events)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection((self.target_host, listener.getsockname()[1]), timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            self.out[s] = b""
        self.pairs[client], self.pairs[upstream] = upstream, client

    def _pump(self, s: socket.socket, events: int) -> None:
        other = self.pairs[s]
        try:
            if events & selectors.EVENT_WRITE:
                sent = s.send(self.out[s])
                self.out[s] = self.out[s][sent:]
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed")
                self.out[other] += data
            return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        for end in (s, other):  # closed or broken on one side: close both
            self.pairs.pop(end, None)
            self.out.pop(end, None)
            end.close()
