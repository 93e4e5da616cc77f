"""Downloading a task's `file_url` without letting it reach into the server's own network (SSRF).

Only http and https; at most `max_bytes`, counted while streaming; one deadline for the whole download, redirects
included. Unless private addresses are allowed, every address a host name resolves to is checked before
connecting (by the resolver the connection itself uses, so a second DNS answer cannot differ), IP literals in the
URL likewise, and redirects are followed by hand so that each hop gets the same checks.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 16
PRIVATE_HINT = "(private, loopback, link-local, multicast and reserved addresses are refused unless the server runs " \
               "with --allow-private-urls)"


class FetchError(Exception):
    """The file could not be fetched; `code` is DashScope's task code, `message` says why."""

    def __init__(self, message: str, code: str = "FILE_DOWNLOAD_FAILED"):
        super().__init__(message)
        self.code = code
        self.message = message


class RefusedAddress(OSError):
    pass


def check_url(url: str) -> None:
    """What can be told without any network: the scheme and a host. Raises FetchError (code InvalidURL)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError as error:
        raise FetchError(f"Invalid file URL {url!r}: {error}.", code="InvalidURL") from error
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"Only http and https file URLs can be fetched, not {url!r}.", code="InvalidURL")
    if not parts.hostname:
        raise FetchError(f"The file URL {url!r} has no host.", code="InvalidURL")


def refusal(address: str) -> str | None:
    """Why an IP address must not be fetched from, or None if it is a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    return None if ip.is_global else f"{address} is not a public address"


class PublicResolver(AbstractResolver):
    """Resolves as usual, then drops every address that `refusal` names; none left is an error."""

    def __init__(self) -> None:
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [result for result in results if refusal(result["host"]) is None]
        if not allowed:
            reasons = "; ".join(dict.fromkeys(str(refusal(result["host"])) for result in results))
            raise RefusedAddress(f"{host} resolves only to refused addresses: {reasons} {PRIVATE_HINT}")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


class Fetcher:
    """One connection pool for every download of a worker; `close` it when done."""

    def __init__(self, max_bytes: int, timeout_s: float, allow_private: bool):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        connector = aiohttp.TCPConnector(resolver=None if allow_private else PublicResolver(), limit=64)
        # trust_env=False: the environment's proxy settings must not route around the address checks
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                             headers={"User-Agent": "qasr-filetrans"})

    async def close(self) -> None:
        await self.session.close()

    async def fetch(self, url: str) -> bytes:
        try:
            return await asyncio.wait_for(self._fetch(url), self.timeout_s)
        except TimeoutError as error:
            raise FetchError(f"Downloading {url} took longer than {self.timeout_s:g} s.") from error

    async def _fetch(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url)
            host = urlsplit(url).hostname or ""
            if not self.allow_private and _is_ip(host) and (reason := refusal(host)):
                raise FetchError(f"Refused to fetch {url}: {reason} {PRIVATE_HINT}.")
            try:
                async with self.session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = str(response.url.join(URL(response.headers["Location"])))
                        continue
                    if response.status >= 400:
                        raise FetchError(f"Fetching {url} failed: HTTP {response.status} {response.reason}.")
                    return await self._read(response)
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, RefusedAddress):
                    raise FetchError(f"Refused to fetch {url}: {error.os_error}.") from error
                raise FetchError(f"Fetching {url} failed: {error}.") from error
            except aiohttp.ClientError as error:
                raise FetchError(f"Fetching {url} failed: {type(error).__name__}: {error}.") from error
        raise FetchError(f"Fetching {url} failed: more than {MAX_REDIRECTS} redirects.")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise self._too_large(response.url)
        data = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            data += chunk
            if len(data) > self.max_bytes:  # a missing or lying Content-Length is caught here
                raise self._too_large(response.url)
        return bytes(data)

    def _too_large(self, url: object) -> FetchError:
        return FetchError(f"The file at {url} is larger than this server's limit of {self.max_bytes / (1 << 20):g} "
                          "MB (--max-fetch-mb).", code="FILE_TOO_LARGE")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
