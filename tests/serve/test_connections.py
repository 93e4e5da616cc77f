"""Connections cannot take the server offline: idle and half-sent connections are closed on time, the open ones stay
below the open-file limit, and at the cap a new client takes an idle one's place."""

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qasr.serve.connections import ConnectionGuard
from qasr.serve.log_limit import RepeatFilter


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_at_the_cap_the_longest_idle_connection_makes_room() -> None:
    guard = ConnectionGuard(max_connections=3, header_timeout_s=5, keepalive_timeout_s=60)
    first, second, third, fourth, fifth = (FakeTransport() for _ in range(5))
    for transport in (first, second, third):
        assert guard.admit(transport)
    guard.open[second].busy = 1  # handling a request: never evicted
    guard.received(third)  # started a request and stalled: evicted before a plainly idle one
    assert guard.admit(fourth) and third.closed and not first.closed
    assert guard.admit(fifth) and first.closed
    for transport in (fourth, fifth):
        guard.open[transport].busy = 1
    assert not guard.admit(FakeTransport())  # everyone is busy: refused
    assert guard.refused == 1 and set(guard.open) == {second, fourth, fifth}


def test_the_sweep_closes_late_headers_and_expired_keep_alives() -> None:
    guard = ConnectionGuard(max_connections=10, header_timeout_s=5, keepalive_timeout_s=60)
    idle, arriving, busy, fresh = (FakeTransport() for _ in range(4))
    for transport in (idle, arriving, busy, fresh):
        guard.admit(transport)
    guard.open[idle].idle_since -= 61
    guard.received(arriving)
    guard.open[arriving].arriving_since -= 6
    guard.open[busy].busy, guard.open[busy].idle_since = 1, guard.open[busy].idle_since - 1000
    guard.sweep()
    assert idle.closed and arriving.closed and not busy.closed and not fresh.closed
    assert set(guard.open) == {busy, fresh}


def test_a_flood_of_one_warning_is_logged_once_per_interval() -> None:
    log_filter = RepeatFilter(interval_s=60)

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("qasr.serve", level, __file__, 1, message, (), None)

    passed = [log_filter.filter(record("socket.accept() out of system resource")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert log_filter.filter(record("another error"))
    assert all(log_filter.filter(record("GET /health 200", logging.INFO)) for _ in range(10))  # the access log
    log_filter.seen[("qasr.serve", logging.ERROR, "socket.accept() out of system resource")] = (time.monotonic() - 61,
                                                                                                 999)
    late = record("socket.accept() out of system resource")
    assert log_filter.filter(late) and "999 more like this" in late.getMessage()


def health(url: str) -> tuple[int, float]:
    start = time.monotonic()
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return response.status, time.monotonic() - start


def open_idle(address: tuple[str, int], count: int, partial: bool) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(address, timeout=10)
        if partial:  # a request that never finishes its headers
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: qasr\r\nX-Slow: ")
        sockets.append(connection)
    return sockets


def closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(0.2)
    try:
        return connection.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def test_hundreds_of_idle_connections_under_a_low_file_limit_leave_health_answering(serve_process,
                                                                                    tmp_path: Path) -> None:
    server = serve_process("--header-timeout-s", "3", "--keepalive-timeout-s", "6", open_files=256,
                           log_path=tmp_path / "serve.log")
    host, port = server.url.removeprefix("http://").split(":")
    sockets: list[socket.socket] = []
    try:
        sockets += open_idle((host, int(port)), 250, partial=True)
        sockets += open_idle((host, int(port)), 250, partial=False)
        for _ in range(5):  # 500 held connections against 256 files: every check still gets in, and fast
            status, seconds = health(server.url)
            assert status == 200 and seconds < 2
        # the ones the server kept: half-sent headers go after 3 s, silent ones after 6 s
        time.sleep(3.5)
        partial_closed = sum(closed_by_server(s) for s in sockets[:250])
        assert partial_closed == 250
        time.sleep(3)
        assert sum(closed_by_server(s) for s in sockets[250:]) == 250
        assert health(server.url)[0] == 200
    finally:
        for connection in sockets:
            connection.close()
        assert server.stop() == 0
    log = server.log()
    assert "Too many open files" not in log and "out of system resource" not in log
    assert len(log) < 200_000, f"{len(log)} bytes of log"


@pytest.mark.parametrize("flag", ["--header-timeout-s", "--keepalive-timeout-s", "--max-connections"])
def test_connection_limits_must_be_positive(flag: str) -> None:
    from qasr.cli import build_parser
    from qasr.serve.options import ServerOptions

    with pytest.raises(ValueError):
        ServerOptions.from_cli_args(build_parser().parse_args(["serve", flag, "0"]))


def test_a_refused_connection_reads_its_whole_503_even_after_sending_its_request(serve_process, tmp_path: Path
                                                                                 ) -> None:
    server = serve_process("--max-connections", "1", log_path=tmp_path / "serve.log")
    host, port = server.url.removeprefix("http://").split(":")
    busy = socket.create_connection((host, int(port)), timeout=10)
    try:  # the one connection in a handler, its upload stalled
        busy.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: qasr\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 200000\r\n\r\n--b\r\n" + b"x" * 1000)
        time.sleep(0.5)
        answers = []
        for _ in range(3):
            newcomer = socket.create_connection((host, int(port)), timeout=10)
            newcomer.sendall(b"GET /health HTTP/1.1\r\nHost: qasr\r\n\r\n")
            time.sleep(0.2)  # the server has answered and moved on before this client reads
            answer = b""
            while chunk := newcomer.recv(4096):
                answer += chunk
            newcomer.close()
            answers.append(answer)
    finally:
        busy.close()
        assert server.stop() == 0
    for answer in answers:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503") and b"Content-Length: %d" % len(body) in head
        assert json.loads(body)["error"]["type"] == "server_error"


def test_a_client_cannot_flood_the_log_with_python_warnings(serve_process, tmp_path: Path) -> None:
    """aiohttp warns (warnings.warn, with the part's header in the text) of each malformed form part: captured
    into the log, they are limited like any repeated warning."""
    server = serve_process(log_path=tmp_path / "serve.log")
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="f%d"; bad key %d %s=1\r\n\r\nv\r\n'
                     % (i, i, b"x" * 2000) for i in range(100))
    body = parts + b"--b--\r\n"
    try:
        before = len(server.log())
        for _ in range(3):
            request = urllib.request.Request(server.url + "/v1/audio/transcriptions", data=body, method="POST",
                                             headers={"Content-Type": "multipart/form-data; boundary=b"})
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=30)
            assert answer.value.code == 400
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "BadContentDispositionParam" in log  # the first is logged
    assert len(log) - before < 20_000, f"{len(log) - before} bytes of log for 300 malformed parts"  # not 600 KB
