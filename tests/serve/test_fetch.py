"""The address guard of file_url downloads (SSRF): every special-purpose block refused whole, and an IPv6 address
judged by the IPv4 address it carries; the hosts --allow-url-host names."""

import asyncio
import ipaddress
import random

import pytest

from qasr.serve.fetch import SPECIAL_PURPOSE, AllowedHosts, refusal


@pytest.mark.parametrize(("address", "reason"), [
    ("192.0.0.8", "192.0.0.0/24"),  # IETF protocol assignments: Python's is_global lets it through in 3.11
    ("2002:7f00:1::", "carries 127.0.0.1"), ("2002:a00:1::1", "carries 10.0.0.1"),  # 6to4
    ("64:ff9b::7f00:1", "carries 127.0.0.1"), ("64:ff9b::a9fe:a9fe", "carries 169.254.169.254"),  # NAT64
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo: 2001::/23 whole
    ("::ffff:192.0.0.8", "192.0.0.0/24"), ("100.64.0.1", "not a public"),
    ("198.51.100.7", "private"),  # documentation: private to Python
    ("fec0::1", "site-local"), ("64:ff9b:1::1", "reserved"),
])
def test_special_purpose_and_carried_addresses_are_refused(address: str, reason: str) -> None:
    assert reason in str(refusal(address)), refusal(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808"])
def test_public_addresses_pass_also_through_6to4_and_nat64(address: str) -> None:
    assert refusal(address) is None


def test_every_address_of_every_special_purpose_block_is_refused() -> None:
    rng = random.Random(0)
    for block in SPECIAL_PURPOSE:
        for address in (block.network_address, block.broadcast_address,
                        *(block.network_address + rng.randrange(block.num_addresses) for _ in range(20))):
            assert refusal(str(address)) is not None, address
            if isinstance(address, ipaddress.IPv4Address):
                assert refusal(f"::ffff:{address}") is not None and refusal(f"64:ff9b::{address}") is not None
                assert refusal(str(ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80)))) is not None


def test_allowed_hosts_match_any_spelling_of_the_named_host_only() -> None:
    allowed = AllowedHosts(["Store.Internal.", "10.0.0.5", "[fd00::1]"])
    for host in ("store.internal", "STORE.INTERNAL.", "10.0.0.5", "0xa.0.0.5", "167772165", "fd00::1", "[fd00:0::1]"):
        assert host in allowed, host
    for host in ("internal", "store.internal.example.com", "xstore.internal", "10.0.0.6", "fd00::2", ""):
        assert host not in allowed, host
    assert not AllowedHosts()


def test_a_download_fails_plainly_where_a_redirect_cannot_be_followed_and_has_no_300_s_cap() -> None:
    """A redirect to a scheme that cannot be fetched, or a 3xx without a Location, is a failed download
    (FILE_DOWNLOAD_FAILED), not a rejected URL nor a body read as the file; aiohttp's own 300 s default limit
    does not cut a download short of --fetch-timeout-s."""
    from aiohttp import web

    from qasr.serve.budget import ByteBudget
    from qasr.serve.fetch import Fetcher, FetchError

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]} if "to" in request.query else {},
                            text="not the file")

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=b"RIFF-audio")

    async def run() -> list[FetchError | bytes]:
        app = web.Application()
        app.router.add_get("/redirect", redirect)
        app.router.add_get("/file", file)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        fetcher = Fetcher(1 << 20, 600.0, allow_private=True, budget=ByteBudget(1 << 30))
        assert fetcher.session.timeout.total is None  # download() holds the one deadline, of 600 s here
        results: list[FetchError | bytes] = []
        try:
            for url in (f"{base}/redirect?to=file:///etc/passwd", f"{base}/redirect", f"{base}/redirect?to=/file"):
                try:
                    async with fetcher.download(url) as data:
                        results.append(data)
                except FetchError as error:
                    results.append(error)
        finally:
            await fetcher.close()
            await runner.cleanup()
        return results

    to_file, no_location, followed = asyncio.run(run())
    assert isinstance(to_file, FetchError) and to_file.code == "FILE_DOWNLOAD_FAILED"
    assert "redirect" in to_file.message and "file:///etc/passwd" in to_file.message
    assert isinstance(no_location, FetchError) and no_location.code == "FILE_DOWNLOAD_FAILED"
    assert "HTTP 302" in no_location.message and "Location" in no_location.message
    assert followed == b"RIFF-audio"
