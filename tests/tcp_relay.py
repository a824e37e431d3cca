"""A TCP relay on loopback that a test can cut: a host's only road to a server (PostgreSQL, say). cut()
drops every connection through it and refuses new ones, as a network partition seen from that host would;
restore() accepts again on the same address. One thread with a selector carries every connection; cut,
restore and close run on that thread and return once done."""

from __future__ import annotations

import queue
import selectors
import socket
import threading
from collections.abc import Callable
from contextlib import suppress

IO_TIMEOUT_S = 5.0  # a peer that stops reading fails its connection instead of stalling the relay


class Relay:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.2") -> None:
        self.target = target
        with socket.socket() as probe:  # a free port on this loopback address
            probe.bind((host, 0))
            self.address: tuple[str, int] = (host, int(probe.getsockname()[1]))
        self.connections = 0  # accepted in all
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._calls: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._listener: socket.socket | None = None
        self._peers: dict[socket.socket, socket.socket] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tcp-relay", daemon=True)

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> Relay:
        self._thread.start()
        self.restore()
        return self

    def restore(self) -> None:
        """Listen again (a no-op while listening)."""
        self._call(self._listen)

    def cut(self) -> None:
        """Refuse new connections (the port closes) and drop every open one."""
        self._call(self._cut)

    def close(self) -> None:
        def finish() -> None:
            self._cut()
            self._closed = True

        self._call(finish)
        self._thread.join(timeout=IO_TIMEOUT_S)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- on the relay's thread
    def _call(self, action: Callable[[], None]) -> None:
        done = threading.Event()
        self._calls.put((action, done))
        self._wake_w.send(b"!")
        if not done.wait(IO_TIMEOUT_S * 2):
            raise TimeoutError("the relay's thread did not answer")

    def _loop(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    self._run_calls()
                elif sock is self._listener:
                    self._accept(sock)
                elif sock in self._peers:
                    self._forward(sock)

    def _run_calls(self) -> None:
        with suppress(OSError):
            self._wake_r.recv(4096)
        while not self._calls.empty():
            action, done = self._calls.get()
            try:
                action()
            finally:
                done.set()

    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.address)
        listener.listen(64)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ)

    def _cut(self) -> None:
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        for sock in list(self._peers):
            self._drop(sock)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(self.target, timeout=IO_TIMEOUT_S)
        except OSError:
            client.close()
            return
        client.settimeout(IO_TIMEOUT_S)
        self._peers[client], self._peers[server] = server, client
        for sock in (client, server):
            self._selector.register(sock, selectors.EVENT_READ)
        self.connections += 1

    def _forward(self, src: socket.socket) -> None:
        try:
            data = src.recv(65536)
            if data:
                self._peers[src].sendall(data)
                return
        except OSError:
            pass
        self._drop(src)

    def _drop(self, sock: socket.socket) -> None:
        """Close a connection, both ends (the client sees its server go away)."""
        peer = self._peers.pop(sock, None)
        for end in (sock, peer):
            if end is None:
                continue
            self._peers.pop(end, None)
            with suppress(KeyError, ValueError):
                self._selector.unregister(end)
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
