"""Graceful drain, what a replica does between SIGTERM and exit: health turns 503 at once so load balancers stop
sending, new requests are turned away with a 503 another replica can take, and those in flight are counted so the
server waits for them (app.drain_and_stop) before it stops the engine."""

import asyncio

from aiohttp import web

from qasr.serve.auth import OPEN_PATHS
from qasr.serve.errors import APIError, Handler, error_response

RETRY_AFTER_S = 1  # another replica can take the request at once


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0  # requests being handled, probes and scrapes aside
        self.idle = asyncio.Event()
        self.idle.set()

    def begin(self) -> None:
        self.draining = True

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:  # /health answers "draining" itself; scrapes and version go on
            return await handler(request)
        if self.draining:
            response = error_response(shutting_down(), request)
            response.force_close()  # a load balancer's kept-alive connection must not bring the next one here
            return response
        self.in_flight += 1
        self.idle.clear()
        try:
            response = await handler(request)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
        if self.draining and not response.prepared:
            response.force_close()
        return response


def shutting_down() -> APIError:
    """A request turned away by a draining server: nothing of it ran."""
    return APIError(503, "This server is shutting down; retry the request (another replica will take it).",
                    code="shutting_down", retry_after=RETRY_AFTER_S)


def cut_short() -> APIError:
    """A request the server had started but stopped when its drain ran out of time (or a second SIGTERM came)."""
    return APIError(503, "This server shut down before your request finished (it outlasted the drain); retry it.",
                    code="shut_down_in_flight", retry_after=RETRY_AFTER_S)
