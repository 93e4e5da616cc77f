"""Error bodies for every failure the server answers: OpenAI's `{"error": {"message", "type", "param", "code"}}`,
and DashScope's `{"request_id", "code", "message"}` under /api/v1/."""

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

logger = logging.getLogger("qasr.serve")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away first

DASHSCOPE_PREFIX = "/api/v1/"
OPENAI_CODES = {401: "invalid_api_key"}
DASHSCOPE_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 403: "AccessDenied", 404: "NotFound",
                   405: "UnsupportedOperation", 413: "BadRequest.TooLarge", 429: "Throttling", 500: "InternalError",
                   503: "ServiceUnavailable"}


class Unavailable(Exception):
    """Something the server needs is down for now (not the client's fault): a 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class APIError(Exception):
    """A failure with the HTTP status and the fields of OpenAI's error body; the middleware renders it."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)

    @property
    def type(self) -> str:
        if self.status == 429:
            return "requests"  # OpenAI's type for its own rate limits, with code rate_limit_exceeded
        return "server_error" if self.status >= 500 else "invalid_request_error"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


MAX_COUNT = 10**18


def parse_count(text: str) -> int | None:
    """A whole number written in ASCII digits, or None. Only ASCII: str.isdigit() also takes "²", which int()
    rejects, and "٣", which it reads. Numbers past 10**18 read as 10**18: int() refuses strings of more than 4,300
    digits, and nothing a client counts goes that high."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else MAX_COUNT


def error_body(error: APIError) -> dict:
    code = error.code or OPENAI_CODES.get(error.status)
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": code}}


def dashscope_error_body(error: APIError) -> dict:
    code = error.code or DASHSCOPE_CODES.get(error.status, "InternalError" if error.status >= 500 else "BadRequest")
    return {"request_id": str(uuid.uuid4()), "code": code, "message": error.message}


def error_response(error: APIError, request: web.Request | None = None) -> web.Response:
    dashscope = request is not None and request.path.startswith(DASHSCOPE_PREFIX)
    body = dashscope_error_body(error) if dashscope else error_body(error)
    return web.json_response(body, status=error.status, headers=error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405/413 pages and any unexpected exception become error JSON; no traceback leaks."""
    try:
        return await handler(request)
    except APIError as error:
        return error_response(error, request)
    except Unavailable as error:
        return error_response(APIError(503, f"{error}; retry later.", retry_after=error.retry_after), request)
    except web.HTTPException as http:
        if http.status < 400:
            raise
        response = error_response(APIError(http.status, _http_message(request, http)), request)
        if "Allow" in http.headers:
            response.headers["Allow"] = http.headers["Allow"]
        return response
    except ConnectionResetError:  # the client hung up (mid-upload): nobody reads this, but the access log does
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(APIError(500, "The server had an error while processing your request."), request)


def _http_message(request: web.Request, http: web.HTTPException) -> str:
    if http.status == 404:
        return f"Not found: {request.method} {request.path}"
    if http.status == 405:
        return f"Method {request.method} is not allowed on {request.path}; allowed: {http.headers.get('Allow', '')}"
    return http.text or http.reason
