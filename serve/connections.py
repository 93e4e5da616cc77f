"""Connections that cannot take the server offline: at most `max_connections` open (kept below the open-file
limit), a deadline for each request's headers, and a bounded keep-alive.

Every connection passes through a `GuardedProtocol` in front of aiohttp's own protocol, so the guard sees bytes
arrive and connections come and go; the guard's middleware sees a request being handled. A connection with no
request in hand is idle: idle too long it is closed, and so is one whose next request has started to arrive but
has not finished its headers within `header_timeout_s` (a slow-loris client). When the cap is reached, a new
connection takes the place of the oldest idle one, so clients that hold connections open without using them
cannot lock out the rest; if every connection is busy, the newcomer gets a 503.
"""

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from qasr.serve.errors import Handler

logger = logging.getLogger("qasr.serve")

FULL_BODY = (b'{"error": {"message": "The server has no free connection; retry.", "type": "server_error", '
             b'"param": null, "code": null}}')
FULL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(FULL_BODY), FULL_BODY))
# A refused connection stays open this long after its 503, reading and dropping what the client sends, unless the
# client closes first: closed at once with the client's request unread, it would be reset and the 503 lost. At most
# MAX_LINGERING at a time, so a flood of refused connections cannot use up the open files.
LINGER_S, MAX_LINGERING = 2.0, 32
# Open files beside the connections: the task store, model files, thread pools and log files hold some, and asyncio
# accepts up to a listen backlog's worth of connections per loop iteration, a couple of iterations before the guard
# hears of the first of them (and one more before a connection it closes gives its file back).
OTHER_FILES = 64
BATCHES_BEFORE_THE_GUARD = 3


@dataclass(slots=True, eq=False)
class Connection:
    transport: asyncio.Transport
    idle_since: float  # when it last had no request in hand: opened, or its last response was handed over
    arriving_since: float | None = None  # the first byte of a request not yet handed to a handler
    busy: int = 0  # requests in the handler

    def close(self) -> None:
        self.transport.close()


class ConnectionGuard:

    def __init__(self, max_connections: int, header_timeout_s: float, keepalive_timeout_s: float):
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.open: dict[asyncio.BaseTransport, Connection] = {}  # in the order they were opened
        self.refused = 0  # connections turned away with a 503: every other one was busy
        self.lingering = 0  # refused connections still open (LINGER_S)
        self.sweeper: asyncio.Task | None = None

    def protocol_factory(self, make_protocol: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GuardedProtocol(self, make_protocol())

    def admit(self, transport: asyncio.Transport) -> bool:
        """Registers a new connection, closing the longest-idle one to make room at the cap (a connection still
        sending its headers goes first); False if there is no room: every open connection has a request."""
        if len(self.open) >= self.max_connections:
            idle = [c for c in self.open.values() if not c.busy]
            if not idle:
                self.refused += 1
                logger.warning("all %d connections are busy: a new one was refused", len(self.open))
                return False
            victim = min(idle, key=lambda c: (c.arriving_since is None, c.arriving_since or c.idle_since))
            self.forget(victim.transport)
            victim.close()
        self.open[transport] = Connection(transport, time.monotonic())
        return True

    def received(self, transport: asyncio.BaseTransport) -> None:
        connection = self.open.get(transport)
        if connection is not None and not connection.busy and connection.arriving_since is None:
            connection.arriving_since = time.monotonic()

    def forget(self, transport: asyncio.BaseTransport) -> None:
        self.open.pop(transport, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self.open.get(request.transport) if request.transport is not None else None
        if connection is None:  # served by a runner without the guard (a test's own app)
            return await handler(request)
        connection.busy += 1
        connection.arriving_since = None
        try:
            return await handler(request)
        finally:
            connection.busy -= 1
            connection.idle_since = time.monotonic()

    def sweep(self) -> None:
        """Closes idle connections past the keep-alive, and ones whose headers are late."""
        now = time.monotonic()
        for connection in list(self.open.values()):
            if connection.busy:
                continue
            late = connection.arriving_since is not None and now - connection.arriving_since > self.header_timeout_s
            if late or now - connection.idle_since > self.keepalive_timeout_s:
                self.forget(connection.transport)
                connection.close()

    async def run_sweeper(self) -> None:
        interval = min(1.0, self.header_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def start(self) -> None:
        self.sweeper = asyncio.get_running_loop().create_task(self.run_sweeper())

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            await asyncio.gather(self.sweeper, return_exceptions=True)


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told what happens to it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None  # None: refused
        self.lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self.guard.admit(transport):
            self.refuse(transport)
            return
        self.transport = transport
        self.inner.connection_made(transport)

    def refuse(self, transport: asyncio.Transport) -> None:
        transport.write(FULL)
        if self.guard.lingering >= MAX_LINGERING:
            transport.close()
            return
        self.guard.lingering += 1
        self.lingering = True
        if transport.can_write_eof():
            transport.write_eof()  # the 503 is all: the client reads it to its end
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:  # a refused connection's bytes are dropped
            self.guard.received(self.transport)
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        # None for a refused connection: the client has closed its side, so the transport closes
        return self.inner.eof_received() if self.transport is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lingering:
            self.guard.lingering -= 1
        if self.transport is not None:
            self.guard.forget(self.transport)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites accept connections through the guard."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: object):
        super().__init__(app, **kwargs)
        self.guard = guard

    @property
    def server(self):  # type: ignore[override]  # what the sites call to make a protocol per connection
        inner = super().server
        return None if inner is None else self.guard.protocol_factory(inner)


def raise_open_file_limit() -> None:
    """Raises the soft open-file limit to the hard one, where that is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def listen_backlog() -> int:
    """The kernel's queue of connections not yet accepted, and so asyncio's batch of accepts: smaller under a low
    open-file limit."""
    return max(16, min(128, open_file_limit() // 8))


def default_max_connections() -> int:
    """What the soft open-file limit leaves for connections."""
    return max(8, open_file_limit() - OTHER_FILES - BATCHES_BEFORE_THE_GUARD * listen_backlog())
