"""Downloading a task's `file_url` without letting it reach into the server's own network (SSRF).

Only http and https; at most `max_bytes`, counted while streaming; one deadline for the whole download, redirects
included. Unless private addresses are allowed, every address the connection is about to use is checked inside the
connector itself, after aiohttp's own parsing: the host as yarl normalised it (fullwidth digits, ideographic full
stops and IDNA folded), resolved by DNS or read as an IP literal in any form the C library accepts (`2130706433`,
`0x7f.1`), so a second DNS answer or a spelling the checks did not foresee cannot differ from what is connected to.
Redirects are followed by hand so that each hop gets the same checks. Hosts named with --allow-url-host pass
whatever they resolve to; only they do, so a redirect from one of them to another private address is refused.
"""

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.tracing import Trace
from yarl import URL

from qasr.serve.budget import ByteBudget

MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 16
PRIVATE_HINT = "(private, loopback, link-local, multicast and reserved addresses are refused unless the server runs " \
               "with --allow-private-urls, or names the host with --allow-url-host)"


class FetchError(Exception):
    """The file could not be fetched; `code` is DashScope's task code, `message` says why."""

    def __init__(self, message: str, code: str = "FILE_DOWNLOAD_FAILED"):
        super().__init__(message)
        self.code = code
        self.message = message


class RefusedAddress(OSError):
    pass


def check_url(url: str) -> URL:
    """What can be told without any network: the scheme and a host, parsed as aiohttp will parse them. Raises
    FetchError (code InvalidURL)."""
    try:
        parsed = URL(url)
        parsed.port  # noqa: B018 -- raises ValueError for a malformed port
    except (ValueError, TypeError) as error:
        raise FetchError(f"Invalid file URL {url!r}: {error}.", code="InvalidURL") from error
    if parsed.scheme.lower() not in ("http", "https"):
        raise FetchError(f"Only http and https file URLs can be fetched, not {url!r}.", code="InvalidURL")
    if not parsed.raw_host:
        raise FetchError(f"The file URL {url!r} has no host.", code="InvalidURL")
    if not parsed.raw_host.isascii():
        raise FetchError(f"The file URL {url!r} has a host that is not ASCII even after IDNA encoding.",
                         code="InvalidURL")
    return parsed


# IANA's special-purpose address registries (RFC 6890 and later): every block not globally reachable, refused whole
# (Python's is_global, the first check, misses some of them in some versions, e.g. 192.0.0.8)
SPECIAL_PURPOSE = {ipaddress.ip_network(block): name for block, name in (
    ("0.0.0.0/8", "this-network"), ("100.64.0.0/10", "shared, carrier-grade NAT"),
    ("192.0.0.0/24", "IETF protocol assignment"), ("192.0.2.0/24", "documentation"), ("192.88.99.0/24", "6to4 relay"),
    ("198.18.0.0/15", "benchmarking"), ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"),
    ("240.0.0.0/4", "reserved"), ("255.255.255.255/32", "broadcast"),
    ("::/8", "reserved"), ("64:ff9b:1::/48", "local NAT64"), ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignment"), ("2001:db8::/32", "documentation"), ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"), ("fc00::/7", "unique-local"), ("fec0::/10", "site-local"),
)}
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are an IPv4 address


def refusal(address: str) -> str | None:
    """Why an IP address must not be fetched from, or None if it is a public one. An IPv6 address that carries an
    IPv4 one (mapped, NAT64, 6to4, Teredo) is refused when that IPv4 address would be; a NAT64 one is judged by it
    alone (an IPv6-only network reaches every IPv4 host that way)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ip in NAT64:
        carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        reason = refusal(str(carried))
        return f"{address} carries {carried}, and {reason}" if reason else None
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    for block, name in SPECIAL_PURPOSE.items():
        if ip.version == block.version and ip in block:
            return f"{address} lies in {block} ({name}), not a public address"
    if isinstance(ip, ipaddress.IPv6Address):
        for carried in (ip.sixtofour, *(ip.teredo or ())):
            if carried is not None and (reason := refusal(str(carried))):
                return f"{address} carries {carried}, and {reason}"
    return None if ip.is_global else f"{address} is not a public address"


def numeric_address(host: str) -> str | None:
    """The IP address an IP literal names, in its plain form, as the C library reads it (inet_aton takes decimal,
    octal, hex and shortened IPv4 forms such as `2130706433` or `0x7f.1`); None for a host name."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))  # an IPv6 zone id is dropped
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


class AllowedHosts:
    """The hosts --allow-url-host lets through: names compared case-blind without a trailing dot, IP addresses in
    any spelling of the same address."""

    def __init__(self, hosts: Sequence[str] = ()):
        self.names = {_plain(host) for host in hosts}
        self.names |= {address for name in self.names if (address := numeric_address(name)) is not None}

    def __contains__(self, host: str) -> bool:
        name = _plain(host)
        return name in self.names or numeric_address(name) in self.names

    def __bool__(self) -> bool:
        return bool(self.names)


def _plain(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class PublicConnector(aiohttp.TCPConnector):
    """Refuses every address `refusal` names, right where aiohttp turns a host into the addresses it connects to;
    aiohttp never calls the resolver for an IP literal, so a resolver alone would miss those."""

    def __init__(self, *, allowed_hosts: AllowedHosts, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.allowed_hosts = allowed_hosts

    async def _resolve_host(self, host: str, port: int,
                            traces: Sequence[Trace] | None = None) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces)
        if host in self.allowed_hosts:
            return results
        allowed, reasons = [], []
        for result in results:
            address = numeric_address(result["host"])
            reason = f"{result['host']} is not an IP address" if address is None else refusal(address)
            if reason is None:
                allowed.append({**result, "host": address})  # connect to exactly what was checked
            else:
                reasons.append(reason)
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to refused addresses: {'; '.join(dict.fromkeys(reasons))} "
                                 f"{PRIVATE_HINT}")
        return allowed


class Fetcher:
    """One connection pool for every download of a worker; `close` it when done."""

    def __init__(self, max_bytes: int, timeout_s: float, allow_private: bool, budget: ByteBudget,
                 allowed_hosts: Sequence[str] = ()):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.allowed_hosts = AllowedHosts(allowed_hosts)
        self.budget = budget
        connector = (aiohttp.TCPConnector(limit=64) if allow_private else
                     PublicConnector(limit=64, allowed_hosts=self.allowed_hosts))
        # trust_env=False: the environment's proxy settings must not route around the address checks; no timeout of
        # aiohttp's own (its default ends any request at 300 s): download() sets the one deadline
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(),
                                             headers={"User-Agent": "qasr-filetrans"})

    async def close(self) -> None:
        await self.session.close()

    @contextlib.asynccontextmanager
    async def download(self, url: str) -> AsyncIterator[bytes]:
        """The file's bytes, counted in the budget of downloads in flight until the block ends. A download waits
        for room for the largest file first (outside its time limit), then keeps room for what it got."""
        async with self.budget.reserve(self.max_bytes) as reservation:
            try:
                data = await asyncio.wait_for(self._fetch(url), self.timeout_s)
            except TimeoutError as error:
                raise FetchError(f"Downloading {url} took longer than {self.timeout_s:g} s.") from error
            reservation.shrink(len(data))
            yield data

    async def _fetch(self, url: str) -> bytes:
        for hop in range(MAX_REDIRECTS + 1):
            try:
                host = check_url(url).raw_host or ""
            except FetchError as error:
                if hop == 0:
                    raise
                raise FetchError(f"Fetching the file failed: a redirect led to a URL that cannot be fetched. "
                                 f"{error.message}") from error
            address = numeric_address(host)
            if (not self.allow_private and address is not None and host not in self.allowed_hosts
                    and (reason := refusal(address))):
                raise FetchError(f"Refused to fetch {url}: {reason} {PRIVATE_HINT}.")  # early, with a plain message
            try:
                async with self.session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        if "Location" not in response.headers:
                            raise FetchError(f"Fetching {url} failed: HTTP {response.status} {response.reason} "
                                             "without a Location to follow.")
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

