"""API keys: who may call the server, which tasks are whose, and result links that work without a key.

A key is checked against every configured one in constant time (digests compared with hmac.compare_digest, never
stopping early), and is kept only in memory: tasks record a keyed hash of their key (HMAC with a secret the
replicas share through the task store), so the database never holds a key, and a leaked database names no one's.
"""

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter

from qasr.serve.errors import APIError, Handler, parse_count

logger = logging.getLogger("qasr.serve")

OPEN_PATHS = frozenset({"/health", "/version", "/metrics"})  # probes and scrapers carry no key
SIGNED_ROUTES = frozenset({"task_result", "task_result_file"})  # served to a valid signature without a key
API_KEY = web.RequestKey("qasr_api_key", str)  # the key a request authenticated with


class KeyRing:
    """The keys the server accepts: those given on the command line or in the environment, and those in a key
    file, which `reload` reads again (on SIGHUP). A key file makes keys required even while it is empty, so
    emptying it locks everyone out instead of opening the server."""

    def __init__(self, keys: Sequence[str] = (), key_file: str | None = None):
        self.fixed = [_valid(key, "--api-key") for key in keys]
        self.key_file = key_file
        self.digests: list[bytes] = []
        self.reload()

    @property
    def enabled(self) -> bool:
        return bool(self.fixed) or self.key_file is not None

    def reload(self) -> int:
        """Reads the key file again; on an error the keys stay as they were. Returns how many keys there are."""
        keys = list(self.fixed)
        if self.key_file is not None:
            for number, line in enumerate(Path(self.key_file).read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.append(_valid(line, f"{self.key_file} line {number}"))
        self.digests = [_digest(key) for key in dict.fromkeys(keys)]
        return len(self.digests)

    def accepts(self, key: str) -> bool:
        digest, found = _digest(key), False
        for known in self.digests:  # no early exit: the time taken says nothing about which key came close
            found |= hmac.compare_digest(known, digest)
        return found


def open_server_warning(host: str, keys: KeyRing) -> str | None:
    """The line to log at start when no key is set and the server listens beyond this machine."""
    if keys.enabled or _loopback(host):
        return None
    return (f"no API key is set and the server listens on {host}: anyone who reaches it can transcribe and read "
            "task results; set --api-key, QASR_API_KEYS or --api-key-file")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _valid(key: str, where: str) -> str:
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError(f"the API key from {where} must be printable ASCII without spaces")
    return key


def _digest(key: str) -> bytes:
    return hashlib.sha256(_bytes(key)).digest()


def _bytes(text: str) -> bytes:
    """Any str as bytes: a header aiohttp could not decode holds lone surrogates, which strict UTF-8 refuses."""
    return text.encode("utf-8", "surrogatepass")


class Authenticator:
    """The middleware that asks for a key on every route but the open ones, while any key is configured."""

    def __init__(self, keys: KeyRing, failures: Counter):
        self.keys = keys
        self.failures = failures  # qasr_auth_failures_total{reason}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.keys.enabled or request.path in OPEN_PATHS:
            return await handler(request)
        if request.match_info.route.name in SIGNED_ROUTES and "signature" in request.query:
            return await handler(request)  # the handler checks the signature
        scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            self.failures.labels("missing").inc()
            raise unauthorized("Missing API key: send it in the header 'Authorization: Bearer YOUR_KEY'.")
        if not self.keys.accepts(key):
            self.failures.labels("invalid").inc()
            raise unauthorized("Incorrect API key provided.")
        request[API_KEY] = key
        return await handler(request)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, headers={"WWW-Authenticate": 'Bearer realm="qasr"'})


def caller_id(secret: bytes, key: str) -> str:
    """What a task records of the key that submitted it."""
    return hmac.new(secret, b"api-key\0" + _bytes(key), hashlib.sha256).hexdigest()


def result_link_query(secret: bytes, task_id: str, index: int, expires: float) -> str:
    """The query string that lets a result document be fetched without a key until `expires` (epoch seconds)."""
    deadline = int(expires)
    return f"expires={deadline}&signature={_result_signature(secret, task_id, index, deadline)}"


def check_result_link(secret: bytes, task_id: str, index: int, query: dict[str, str]) -> None:
    """Raises a 403 unless the query carries a signature made for this task, result and expiry, not yet past."""
    deadline = parse_count(query.get("expires", ""))
    expected = _result_signature(secret, task_id, index, deadline if deadline is not None else -1)
    if deadline is None or not hmac.compare_digest(expected.encode(), _bytes(query.get("signature", ""))):
        raise APIError(403, "This result link is not valid: its signature does not match.", code="AccessDenied")
    if time.time() > deadline:
        raise APIError(403, "This result link has expired.", code="AccessDenied")


def _result_signature(secret: bytes, task_id: str, index: int, deadline: int) -> str:
    message = _bytes(f"result\0{task_id}\0{index}\0{deadline}")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
