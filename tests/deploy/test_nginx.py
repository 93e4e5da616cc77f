"""deploy/nginx/qasr.conf: Debian's `nginx -t` accepts it as it stands, its limits, timeouts, headers and retry
rules match what the server does, and in front of two stub replicas it goes around a draining one where that is
safe (tests/benchmarks/test_faults.py runs it in front of real replicas)."""

import asyncio
import re
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from qasr.benchmarks.faults import SUBMIT
from qasr.benchmarks.processes import NGINX_CONFIG, Nginx, main_config, point_at
from qasr.serve.options import ServerOptions

SIZES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@pytest.fixture(scope="module")
def config() -> str:
    return NGINX_CONFIG.read_text()


def directives(text: str, name: str) -> list[str]:
    """The arguments of every `name ...;` directive, comments left out."""
    bare = re.sub(r"#[^\n]*", "", text)
    return [match.strip() for match in re.findall(rf"(?<![\w-]){name}\s+([^;{{]*);", bare)]


def block(text: str, header: str) -> str:
    """The body of the block that opens with `header {` (no nested blocks inside)."""
    match = re.search(re.escape(header) + r"\s*\{([^{}]*)\}", re.sub(r"#[^\n]*", "", text))
    assert match, f"no block {header!r}"
    return match.group(1)


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_nginx_accepts_the_config_as_it_stands(tool, tmp_path: Path, config: str) -> None:
    nginx = tool("nginx", "apt-get install nginx-light (make setup does)")
    (tmp_path / "nginx.conf").write_text(main_config(tmp_path, NGINX_CONFIG))
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-e", str(tmp_path / "error.log")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr
    pointed = point_at(config, ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"], "127.0.0.1:8080")
    (tmp_path / "qasr.conf").write_text(pointed)
    (tmp_path / "nginx.conf").write_text(main_config(tmp_path, tmp_path / "qasr.conf"))
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-e", str(tmp_path / "error.log")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in ("qasr", "qasr_tasks"):
        servers = directives(block(pointed, f"upstream {name}"), "server")
        assert [server.split()[0] for server in servers] == ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    assert directives(pointed, "listen") == ["127.0.0.1:8080"]


def test_upstreams_balance_by_load_and_check_replicas_passively(config: str) -> None:
    upstreams = {name: block(config, f"upstream {name}") for name in ("qasr", "qasr_tasks")}
    replicas = []
    for name, body in upstreams.items():
        assert "least_conn" in body, name
        servers = directives(body, "server")
        assert servers and all(re.search(r"max_fails=\d+ fail_timeout=\d+s", server) for server in servers), name
        replicas.append([server.split()[0] for server in servers])
        # nginx closes idle upstream connections before the server does, never the other way round
        assert seconds(directives(body, "keepalive_timeout")[0]) < ServerOptions().keepalive_timeout_s, name
    assert replicas[0] == replicas[1], "both upstreams list the same replicas"


def test_limits_and_timeouts_match_the_servers(config: str) -> None:
    options = ServerOptions()
    size = directives(config, "client_max_body_size")[0]
    assert int(size[:-1]) * SIZES[size[-1]] >= options.max_body_bytes  # an upload the server takes passes nginx
    assert seconds(directives(config, "client_header_timeout")[0]) == options.header_timeout_s
    assert seconds(directives(config, "client_body_timeout")[0]) <= options.upload_timeout_s
    transcriptions = block(config, "location /v1/")
    assert directives(transcriptions, "proxy_buffering") == ["off"]  # SSE events reach the client as they come
    # a stream waiting for its first token stays alive through the server's SSE keep-alive comments
    assert seconds(directives(transcriptions, "proxy_read_timeout")[0]) >= 60 * options.sse_keepalive_s


def test_result_links_and_retries(config: str) -> None:
    headers = dict(value.split(None, 1) for value in directives(config, "proxy_set_header"))
    assert headers["X-Forwarded-Proto"] == "$scheme" and headers["X-Forwarded-Host"] == "$http_host"
    assert headers["Host"] == "$host" and headers["Connection"] == '""'
    # a transcription changes nothing, and a submit with an Idempotency-Key finds the task a first replica stored:
    # one that failed or was turned away (503) goes to the next replica, and so a draining replica's 503 counts as
    # its failure and takes it out of rotation
    resent = [block(config, "location /v1/"), block(config, "location @submit_with_key")]
    for location in resent:
        [retry] = directives(location, "proxy_next_upstream")
        assert {"error", "timeout", "http_503", "non_idempotent"} <= set(retry.split())
    submit = re.search(r"location = /api/v1/services/audio/asr/transcription \{.*?\n    \}", config, re.S)
    assert submit and "error_page 418 = @submit_with_key;" in submit.group(0)
    assert re.search(r"if \(\$http_idempotency_key\) \{\s*return 418;", submit.group(0))
    # elsewhere (a submit without a key above all) a POST that reached a replica is never sent to another
    rest = re.sub(r"#[^\n]*", "", config)
    for location in resent:
        rest = rest.replace(location, "")
    [retry] = directives(rest, "proxy_next_upstream")
    assert "non_idempotent" not in retry and {"error", "timeout", "http_503"} <= set(retry.split())
    assert int(directives(config, "proxy_next_upstream_tries")[0]) >= 2
    assert directives(block(config, "location = /metrics"), "return") == ["404"]  # scrape the replicas themselves


def test_a_draining_replica_is_gone_around_for_transcriptions_and_keyed_submits_only(tmp_path: Path) -> None:
    """Two stub replicas behind the config as it stands: one turns every request away with a draining replica's 503
    at once (so least_conn, counting connections, favours it), the other answers after 0.3 s. A transcription, and a
    task submit with an Idempotency-Key, reach the other one whole; a submit without a key gets the 503 (its client
    sends it again: it may have stored a task)."""
    received: Counter[str] = Counter()

    async def draining(request: web.Request) -> web.Response:
        await request.read()
        received["draining"] += 1
        return web.json_response({"error": {"code": "shutting_down"}}, status=503,
                                 headers={"Retry-After": "1", "Connection": "close"})

    async def serving(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(0.3)
        return web.json_response({"bytes": len(body), "key": request.headers.get("Idempotency-Key")})

    async def run() -> dict[str, list[tuple[int, dict]]]:
        runners = []
        for handler in (draining, serving):
            app = web.Application()
            app.router.add_route("*", "/{path:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            runners.append(runner)
        replicas = [f"127.0.0.1:{runner.addresses[0][1]}" for runner in runners]
        nginx = await asyncio.to_thread(Nginx, replicas, tmp_path / "nginx")
        answers: dict[str, list[tuple[int, dict]]] = {}
        try:
            async with aiohttp.ClientSession() as session:
                async def post(path: str, headers: dict[str, str]) -> tuple[int, dict]:
                    async with session.post(nginx.url + path, data=b"x" * 5000, headers=headers) as response:
                        return response.status, await response.json(content_type=None)

                # the submit without a key first: nginx has counted no failure of the draining stub yet
                for case, path, headers in [("submit", SUBMIT, {}), ("keyed submit", SUBMIT, {"Idempotency-Key": "k"}),
                                            ("transcription", "/v1/audio/transcriptions", {})]:
                    answers[case] = list(await asyncio.gather(*(post(path, headers) for _ in range(8))))
        finally:
            await asyncio.to_thread(nginx.stop)
            for runner in runners:
                await runner.cleanup()
        return answers

    answers = asyncio.run(run())
    assert {status for status, _ in answers["submit"]} >= {503}
    for case in ("keyed submit", "transcription"):
        assert [status for status, _ in answers[case]] == [200] * 8, case
        assert all(body["bytes"] == 5000 for _, body in answers[case]), case  # resent whole
    assert all(body["key"] == "k" for _, body in answers["keyed submit"])
    assert received["draining"] > 2  # it was tried, not left out from the start
