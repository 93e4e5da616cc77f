"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, for every failure the server answers."""

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

logger = logging.getLogger("qasr.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class APIError(Exception):
    """A failure with the HTTP status and the fields of OpenAI's error body; the middleware renders it."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        return "server_error" if self.status >= 500 else "invalid_request_error"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(error: APIError) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(error: APIError) -> web.Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return web.json_response(error_body(error), status=error.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 pages and any unexpected exception become OpenAI JSON; no traceback leaks."""
    try:
        return await handler(request)
    except APIError as error:
        return error_response(error)
    except web.HTTPException as http:
        if http.status < 400:
            raise
        response = error_response(APIError(http.status, _http_message(request, http)))
        if "Allow" in http.headers:
            response.headers["Allow"] = http.headers["Allow"]
        return response
    except ConnectionResetError:  # the client went away: there is nobody to answer
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(APIError(500, "The server had an error while processing your request."))


def _http_message(request: web.Request, http: web.HTTPException) -> str:
    if http.status == 404:
        return f"Not found: {request.method} {request.path}"
    if http.status == 405:
        return f"Method {request.method} is not allowed on {request.path}; allowed: {http.headers.get('Allow', '')}"
    return http.text or http.reason
