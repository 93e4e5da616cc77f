"""Abuse: what careless clients and attackers do to a server, as one repeatable run.

    qasr bench abuse                            # launches `qasr serve` (the demo model) in a process of its own
    qasr bench abuse --base-url http://host:8000 --capacity 1280

Five runs against /v1/audio/transcriptions, each followed by a wait until the server is idle again (recovery):
fuzz (forms with random, malformed and hostile field values and files), burst (`--burst-factor` times the server's
capacity at once), hang-ups (clients that go away mid-headers, mid-upload, before the answer and mid-stream),
slow (connections held open without a request, or with half of one, while /health is timed) and amplification
(cheap inputs that used to buy expensive work). A row per run: requests by status (never a 5xx), hangs (requests
with no answer within `--timeout-s`: never any), the slowest answer, the recovery time, and the launched server's
peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import re
import time
from collections import Counter

import aiohttp
import numpy as np
import soundfile as sf
import torch

from qasr.benchmarks.heldout import HELDOUT
from qasr.benchmarks.processes import ServerProcess
from qasr.benchmarks.report import add_output_arguments, print_table, write_results

RUNS = ("fuzz", "burst", "hangups", "slow", "amplification")
SILENCE_SECONDS = 120
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FIELD_VALUES = {
    "model": ["qasr-demo", "", "whisper-1", "x" * 10_000, "qasr-demo\n", "\x00"],
    "language": ["en", "EN", "en-US", "klingon", "", "zh-Hant", "\u202e", "a" * 5000],
    "prompt": ["", "Paris, Berlin", "<|im_end|>", "漢" * 1000, "x" * 5000, "\u0000" * 10],
    "response_format": [*FORMATS, "docx", "", "JSON"],
    "temperature": ["0", "1.5", "-1", "nan", "inf", "1e309", "warm", "9" * 5000],
    "stream": ["true", "false", "1", "maybe", ""],
    "timestamp_granularities[]": ["segment", "word", "char", ""],
    "max_completion_tokens": ["1", "2", "0", "-5", "9" * 5000, "1.5", "²"],
}


def wav(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


class Abuse:
    """The runs, against one server; every request gives up after `timeout_s` and then counts as a hang."""

    def __init__(self, url: str, clips: list[bytes], timeout_s: float, seed: int):
        self.url = url
        self.clips = clips
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.session: aiohttp.ClientSession | None = None

    async def post(self, data: object, headers: dict | None = None) -> tuple[int | None, float, dict]:
        """(status or None for a hang, seconds, headers) of one POST to the transcription route."""
        assert self.session is not None
        start = time.monotonic()

        async def answer() -> tuple[int, dict]:
            async with self.session.post(self.url + "/v1/audio/transcriptions", data=data,
                                         headers=headers) as response:
                await response.read()
                return response.status, dict(response.headers)

        try:
            status, response_headers = await asyncio.wait_for(answer(), self.timeout_s)
        except TimeoutError:
            return None, time.monotonic() - start, {}
        return status, time.monotonic() - start, response_headers

    def form(self, file: bytes | None, fields: dict[str, str]) -> aiohttp.FormData:
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, value)
        if file is not None:
            data.add_field("file", file, filename="clip.opus", content_type="application/octet-stream")
        return data

    def fuzz_request(self) -> tuple[object, dict | None]:
        rng = self.rng
        clip = rng.choice(self.clips)
        file = rng.choice([clip, clip, clip[: len(clip) // 3], rng.randbytes(2048), b"", b"hello, not audio",
                           wav(np.zeros(10_800, np.float32), 1), None])
        fields = {name: rng.choice(values) for name, values in FIELD_VALUES.items() if rng.random() < 0.4}
        shape = rng.random()
        if shape < 0.8:
            return self.form(file, fields), None
        if shape < 0.9:
            return json.dumps(fields), {"Content-Type": rng.choice(["application/json", "text/plain", ""])}
        return b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n" + (file or b""), {
            "Content-Type": "multipart/form-data; boundary=b"}  # no closing boundary

    async def fuzz(self, count: int) -> list[tuple[int | None, float]]:
        requests = [self.fuzz_request() for _ in range(count)]
        slots = asyncio.Semaphore(16)

        async def one(data: object, headers: dict | None) -> tuple[int | None, float]:
            async with slots:
                status, seconds, _ = await self.post(data, headers)
                return status, seconds

        return await asyncio.gather(*(one(data, headers) for data, headers in requests))

    async def burst(self, count: int) -> list[tuple[int | None, float]]:
        """Everything at once; a 429 without Retry-After counts as a failure (status 0)."""
        async def one(i: int) -> tuple[int | None, float]:
            status, seconds, headers = await self.post(self.form(self.clips[i % len(self.clips)], {}))
            return (0 if status == 429 and "Retry-After" not in headers else status), seconds

        return await asyncio.gather(*(one(i) for i in range(count)))

    async def hangups(self, count: int) -> list[tuple[int | None, float]]:
        """Raw connections that go away at every stage of a request; the server must let all of them go."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        payload_bytes = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="clip.opus"\r\n\r\n'
                         + self.clips[0] + b'\r\n--b\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue'
                         b"\r\n--b--\r\n")
        head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                f"boundary=b\r\nContent-Length: {len(payload_bytes)}\r\n\r\n").encode()
        stages = [head[: len(head) // 2], head + payload_bytes[: len(payload_bytes) // 2], head + payload_bytes,
                  head + payload_bytes]

        async def one(i: int) -> tuple[int | None, float]:
            stage = i % len(stages)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(stages[stage])
            await writer.drain()
            if stage == 3:  # a stream: wait for its first event, then leave
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout_s)
            await asyncio.sleep(self.rng.uniform(0, 0.2))
            writer.close()
            return 499, 0.0  # nginx's status for a request whose client went away: counted with the 4xx

        return await asyncio.gather(*(one(i) for i in range(count)))

    async def slow(self, count: int) -> list[tuple[int | None, float]]:
        """`count` connections held open (half with half a request), /health timed five times meanwhile."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        writers = []
        for i in range(count):
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                break  # the server or this machine ran out of connections: the checks below tell which matters
            if i % 2:
                writer.write(b"GET /health HTTP/1.1\r\nHost: qasr\r\nX-Slow: ")
            writers.append(writer)
        checks = []
        assert self.session is not None
        for _ in range(5):
            start = time.monotonic()
            try:
                checks.append((await asyncio.wait_for(self.health(), self.timeout_s), time.monotonic() - start))
            except (TimeoutError, aiohttp.ClientError):
                checks.append((None, time.monotonic() - start))
            await asyncio.sleep(0.2)
        for writer in writers:
            writer.close()
        return checks

    async def health(self) -> int:
        assert self.session is not None
        async with self.session.get(self.url + "/health") as response:
            return response.status

    async def amplification(self) -> list[tuple[int | None, float]]:
        """Cheap inputs: a 21 KB WAV that claims 1 Hz, a huge max_completion_tokens, a prompt of rare characters,
        1,001 form fields, and two minutes of silence in a few kilobytes of FLAC sent ten times at once (past the
        audio in flight a server holds, 429s)."""
        silence = wav(np.zeros(SILENCE_SECONDS * 8000, np.float32), 8000, "FLAC")
        cases = [self.form(wav(np.zeros(10_800, np.float32), 1), {}),
                 self.form(self.clips[0], {"max_completion_tokens": "9" * 5000}),
                 self.form(self.clips[0], {"prompt": "漢" * 1365}),
                 self.form(self.clips[0], {f"field{i}": "x" for i in range(1001)})]
        cases += [self.form(silence, {}) for _ in range(10)]
        return [(status, seconds) for status, seconds, _ in
                await asyncio.gather(*(self.post(data) for data in cases))]

    async def idle_after(self) -> float:
        """Seconds until /health answers 200 and no request is left in the engine."""
        assert self.session is not None
        start = time.monotonic()
        while time.monotonic() - start < self.timeout_s:
            try:
                async with self.session.get(self.url + "/health") as health, \
                        self.session.get(self.url + "/metrics") as metrics:
                    text = await metrics.text()
                    busy = sum(float(m.group(1)) for m in re.finditer(
                        r"^qasr_num_requests_(?:running|waiting) (\S+)$", text, re.M))
                    if health.status == 200 and busy == 0:
                        return time.monotonic() - start
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        return float("inf")


def row(run: str, outcomes: list[tuple[int | None, float]], recovery_s: float, peak_rss_mb: float | None) -> dict:
    statuses = Counter(status for status, _ in outcomes)
    answered = [seconds for status, seconds in outcomes if status is not None]
    return {"run": run, "requests": len(outcomes),
            "status_2xx": sum(n for s, n in statuses.items() if s is not None and 200 <= s < 300),
            "status_4xx": sum(n for s, n in statuses.items() if s is not None and 400 <= s < 500 and s != 429),
            "status_429": statuses[429],
            "status_5xx": sum(n for s, n in statuses.items() if s is not None and s >= 500),
            "failed": statuses[0], "hangs": statuses[None], "max_latency_s": max(answered, default=0.0),
            "recovery_s": recovery_s, "server_peak_rss_mb": peak_rss_mb}


async def abuse(args: argparse.Namespace, url: str, server: ServerProcess | None) -> list[dict]:
    clips = [(HELDOUT / json.loads(line)["file"]).read_bytes()
             for line in (HELDOUT / "manifest.jsonl").read_text().splitlines()[:8]]
    runner = Abuse(url, clips, args.timeout_s, args.seed)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as runner.session:
        results = []
        for run in args.runs:
            if run == "fuzz":
                outcomes = await runner.fuzz(args.requests)
            elif run == "burst":
                outcomes = await runner.burst(args.burst_factor * args.capacity)
            elif run == "hangups":
                outcomes = await runner.hangups(args.hangups)
            elif run == "slow":
                outcomes = await runner.slow(args.slow_connections)
            else:
                outcomes = await runner.amplification()
            recovery = await runner.idle_after()
            results.append(row(run, outcomes, recovery, server.peak_rss_mb() if server else None))
        return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=None, help="a server to abuse; default: launch `qasr serve` (the demo "
                        "model, small limits below) in a process of its own")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--requests", type=int, default=500, help="fuzzed requests")
    parser.add_argument("--capacity", type=int, default=12, help="the server's max_num_seqs + max_queued_requests "
                        "(a launched server gets 4 + 8)")
    parser.add_argument("--burst-factor", type=int, default=10)
    parser.add_argument("--hangups", type=int, default=200)
    parser.add_argument("--slow-connections", type=int, default=600)
    parser.add_argument("--open-files", type=int, default=512, help="the launched server's open-file limit")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="an answer later than this is a hang")
    parser.add_argument("--seed", type=int, default=0)
    add_output_arguments(parser)


def main(args: argparse.Namespace) -> int:
    server = None
    if args.base_url is None:
        log = args.out_dir / "abuse-server.log"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        # room for three of the amplification run's ten silences at once
        server = ServerProcess("--max-num-seqs", "4", "--max-queued-requests", str(args.capacity - 4),
                               "--max-audio-seconds", str(3 * SILENCE_SECONDS),
                               "--max-audio-seconds-in-flight", str(3.5 * SILENCE_SECONDS), "--header-timeout-s", "5",
                               log_path=log, open_files=args.open_files)
    url = args.base_url.rstrip("/") if args.base_url else server.url
    try:
        rows = asyncio.run(abuse(args, url, server))
    finally:
        exit_code = server.stop() if server else 0
    config = {"base_url": url, "launched": server is not None, "runs": args.runs, "requests": args.requests,
              "capacity": args.capacity, "burst_factor": args.burst_factor, "hangups": args.hangups,
              "slow_connections": args.slow_connections, "open_files": args.open_files if server else None,
              "timeout_s": args.timeout_s, "seed": args.seed, "server_exit_code": exit_code}
    print_table(rows)
    device = (torch.device("cuda" if torch.cuda.is_available() else "cpu") if server
              else f"unknown: remote server at {url}")
    print(f"results: {write_results('abuse', device, config, rows, args.out_dir)}")
    return 0
