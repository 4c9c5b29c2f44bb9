"""A fake API that keeps connections alive (HTTP/1.1) and notes which connection (and client port)
every request came over, so tests can count the connections a client opened. The fakes in
fake_apis.py speak HTTP/1.0 and close each connection after one answer: there, every client looks like
one connection per request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from ktrdr_collect.providers.http import close_idle_connections
from tests.providers.fake_apis import ApiServer, FakeApi, Handler, Request, Running

IDLE_TIMEOUT_S = 10.0
"""A kept-alive connection left idle this long is closed by the server (a backstop: teardown closes
the client's idle connections first, so the server's threads can be joined at once)."""


@dataclass(frozen=True)
class Arrival:
    connection: int  # the server's count of accepted connections when this one was accepted
    port: int  # the client's port


class KeepAliveHandler(Handler):
    """One instance per connection (socketserver), serving requests until the client or a script closes it."""

    server: KeepAliveServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def setup(self) -> None:
        super().setup()
        self.connection_no = self.server.accepted()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.note(Arrival(self.connection_no, self.client_address[1]))
        super().do_GET()


class KeepAliveServer(ApiServer):
    def __init__(self, api: FakeApi) -> None:
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), KeepAliveHandler)
        self.api = api
        self._accepted = 0
        self._arrivals: list[Arrival] = []
        self._lock = threading.Lock()

    def accepted(self) -> int:
        with self._lock:
            self._accepted += 1
            return self._accepted

    def note(self, arrival: Arrival) -> None:
        with self._lock:
            self._arrivals.append(arrival)

    @property
    def arrivals(self) -> list[Arrival]:
        """Each request's connection and client port, in arrival order."""
        with self._lock:
            return list(self._arrivals)


@dataclass
class KeepAliveRunning(Running):
    server: KeepAliveServer

    @property
    def connections(self) -> int:
        """How many connections the requests so far came over (counted as the server accepted them:
        the OS may hand a closed connection's client port to the next one)."""
        return len({a.connection for a in self.server.arrivals})

    @property
    def ports(self) -> set[int]:
        return {a.port for a in self.server.arrivals}


def serve_keep_alive(route: Callable[[Handler, Request], None]) -> Iterator[KeepAliveRunning]:
    """Like fake_apis.serve, over HTTP/1.1 keep-alive; the browser transport's idle connections are
    closed before the server's threads are joined."""
    api = FakeApi(route)
    server = KeepAliveServer(api)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-api")
    thread.start()
    try:
        yield KeepAliveRunning(server, api)
    finally:
        api.release.set()
        close_idle_connections()
        server.shutdown()
        server.server_close()
        thread.join()
