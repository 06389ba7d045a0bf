"""Real TCP servers between the operator and a store, for the tiers that test what a tenant's store can make
the operator do (e2e, in-process): a relay in front of MinIO that counts (or drips) what it sends back, and
a listener that records connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class _Server:
    """A TCP server on a free local port that hands each connection to ``handle`` until it is closed."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.handle(connection)

    def handle(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


class Relay(_Server):
    """A TCP relay in front of MinIO that counts what MinIO sends back: what the operator downloaded.
    With ``drip``, it passes MinIO's answers on 1 KiB at a time, ``drip`` seconds apart: a slow server."""

    def __init__(self, target_port: int, drip: float = 0.0):
        self.target_port = target_port
        self.drip = drip
        self.received = 0
        self._lock = threading.Lock()
        super().__init__()

    def handle(self, connection: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pipe, args=(connection, upstream, False), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, connection, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 10 if counted and self.drip else 1 << 16):
                if counted and self.drip:
                    time.sleep(self.drip)
                sink.sendall(data)
                if counted:
                    with self._lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


class Listener(_Server):
    """A TCP listener that records every connection made to it (and answers none)."""

    def __init__(self):
        self.connections = 0
        super().__init__()

    def handle(self, connection: socket.socket) -> None:
        self.connections += 1
        connection.close()
