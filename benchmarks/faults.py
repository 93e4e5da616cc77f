"""Faults: qasr replicas behind a real nginx dying and draining under load, as one repeatable run.

    qasr bench faults                           # 2 replicas of the demo model, a throwaway PostgreSQL, nginx
    qasr bench faults --replicas 3 --clients 16 --phase-s 20

The replicas (`qasr serve` processes sharing a PostgreSQL task store and an API key file) sit behind Debian's nginx
serving the repository's deploy/nginx/qasr.conf. Clients send transcriptions and submit DashScope tasks through
nginx, with keys, the way the SDKs do: a 502 or 503 is sent again (the OpenAI SDK retries both), a submit with its
Idempotency-Key. A draining replica turns requests away with a 503 and Retry-After. nginx sends a transcription
or a submit with an Idempotency-Key that failed on one replica (it died, or turned the request away) to the next
itself; a submit without a key it does not send again once a replica has it (it may have stored a task).

  check  a wrong key is a 401 in each API's shape; a key added to the key file works once the replicas get SIGHUP
  kill   SIGKILL of a replica while it transcribes: requests in flight on it are sent again by nginx or end
         502/503, none hangs; every request started after the kill succeeds (nginx routes around the dead replica)
  drain  the killed replica restarts on its port; then SIGTERM of another while it transcribes and a slow client
         is still uploading to it (which holds the drain open --drain-hold-s): its /health turns 503 first, no
         request started before the signal fails (the slow upload included), every request sent during the drain
         succeeds, it exits 0
  tasks  every accepted task ends SUCCEEDED exactly once (one row per Idempotency-Key) with the transcript the
         clip got in the warm-up, fetched through its signed link without a key

A row per phase: requests and tasks sent, faults injected, first answers by status, transcriptions and submits
nginx sent to a second replica (`resent`, from its access log), hangs, tasks lost (must be 0), and `violations`:
every broken promise, named (must be none). A replica that outlives its drain is made to write its threads' stacks
into its log (`faults-replica-*.log`, kept beside the results) before it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf
import torch
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from qasr.benchmarks.heldout import HELDOUT
from qasr.benchmarks.processes import NGINX_CONFIG, Nginx, ServerProcess, ThrowawayPostgres, free_port
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.engine.audio import SAMPLE_RATE, load_audio

KEY, ADDED_KEY = "sk-faults-0123456789", "sk-faults-added-9876543210"
TRANSCRIPTIONS, SUBMIT = "/v1/audio/transcriptions", "/api/v1/services/audio/asr/transcription"
FINAL = ("SUCCEEDED", "FAILED", "CANCELED")
MAX_TRIES = 6  # a client's attempts at one request that nginx or a draining replica turns away
RETRY_AFTER_S = 1.0  # what a draining replica's Retry-After says
LONG_CLIP_SECONDS = 12.0  # the load's clips: long enough that a fault finds requests in flight


@dataclass
class Call:
    """One client request, with its retries: `first` and `final` status (None: no answer in time, a hang, or the
    connection failed), when it started and ended."""

    phase: str
    kind: str  # "transcription" or "submit"
    started: float
    ended: float = 0.0
    first: int | None = None
    final: int | None = None
    first_code: str | None = None  # the error code of the first answer, if it was an error
    tries: int = 0
    text: str | None = None  # a transcription's
    task_id: str | None = None  # an accepted submit's
    wrong_text: bool = False


@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    clips: list[bytes] = field(default_factory=list)  # WAV files: the held-out clips, and one long clip
    expected: list[str] = field(default_factory=list)  # each clip's transcript in the warm-up
    calls: list[Call] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)  # accepted task id -> clip index
    violations: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    faults: Counter = field(default_factory=Counter)
    resent: Counter = field(default_factory=Counter)  # phase -> requests nginx sent to a second replica
    servers: list[ServerProcess | None] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None
    nginx: Nginx | None = None
    database: str = ""
    file_url: str = ""
    drain_s: float = 0.0  # SIGTERM to the drained replica's exit

    # ------------------------------------------------------------------------------------------------ the fleet

    def start_replica(self, index: int) -> ServerProcess:
        generation = sum(1 for _ in self.root.glob(f"replica-{index}-*.log"))
        server = ServerProcess(
            "--port", str(self.ports[index]), "--task-db", self.database, "--api-key-file", str(self.root / "keys"),
            "--allow-url-host", "127.0.0.1", "--max-num-seqs", "4", "--task-lease-s", str(self.args.task_lease_s),
            "--drain-timeout-s", str(self.args.drain_timeout_s),
            log_path=self.root / f"replica-{index}-{generation}.log")
        self.servers[index] = server
        return server

    def start_fleet(self, postgres: ThrowawayPostgres) -> None:
        self.database = postgres.new_database()
        (self.root / "keys").write_text(f"# the benchmark's client\n{KEY}\n")
        self.ports = [free_port() for _ in range(self.args.replicas)]
        self.servers = [None] * self.args.replicas
        starters = [threading.Thread(target=self.start_replica, args=(i,)) for i in range(self.args.replicas)]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()
        if None in self.servers:
            raise RuntimeError("a replica did not start; see replica-*.log in " + str(self.root))
        self.nginx = Nginx([f"127.0.0.1:{port}" for port in self.ports], self.root / "nginx", self.args.nginx_config)

    def stop_fleet(self) -> None:
        """Every replica stopped (killed after a minute) and nginx, whatever happened before."""
        for server in self.servers:
            if server is not None and server.process.poll() is None:
                try:
                    server.stop(signal.SIGTERM)
                except subprocess.TimeoutExpired:  # killed by stop(); the phase that waited on it says why
                    pass
        if self.nginx is not None:
            self.nginx.stop()

    # ------------------------------------------------------------------------------------------------ clients

    async def request(self, method: str, url: str, data: object = None,
                      headers: dict[str, str] | None = None) -> tuple[int | None, bytes]:
        """(status, body); (None, b"") for no answer within --timeout-s or a failed connection."""
        assert self.session is not None

        async def answer() -> tuple[int, bytes]:
            async with self.session.request(method, url, data=data, headers=headers) as response:
                return response.status, await response.read()

        try:
            return await asyncio.wait_for(answer(), self.args.timeout_s)
        except (TimeoutError, aiohttp.ClientError):
            return None, b""

    async def post(self, path: str, data: object, headers: dict[str, str]) -> tuple[int | None, bytes]:
        assert self.nginx is not None
        return await self.request("POST", self.nginx.url + path, data, headers)

    async def get(self, url: str, key: str | None = KEY) -> tuple[int | None, bytes]:
        return await self.request("GET", url, headers={"Authorization": f"Bearer {key}"} if key else {})

    async def transcribe(self, phase: str, clip: int, key: str = KEY) -> Call:
        call = Call(phase, "transcription", time.monotonic())
        while True:
            status, body = await self.post(TRANSCRIPTIONS, self.form(clip), {"Authorization": f"Bearer {key}"})
            call.tries += 1
            if call.tries == 1:
                call.first, call.first_code = status, error_code(status, body)
            if status not in (502, 503) or call.tries == MAX_TRIES:  # a draining replica, or its last moment
                break
            await asyncio.sleep(RETRY_AFTER_S)
        return self.transcribed(call, clip, status, body)

    async def slow_transcription(self, index: int, clip: int, seconds: float, sending: asyncio.Event) -> Call:
        """A transcription sent straight to replica `index`, its upload trickling in over `seconds` as from a slow
        client: a request in flight there all along (`sending` is set once it has begun), holding its drain open."""
        payload = self.form(clip)()
        body, pieces = await payload.as_bytes(), 16

        async def trickle() -> AsyncIterator[bytes]:
            for piece in range(pieces):
                yield body[piece * len(body) // pieces:(piece + 1) * len(body) // pieces]
                sending.set()
                await asyncio.sleep(seconds / pieces)

        call = Call("drain", "transcription", time.monotonic(), tries=1)
        status, answer = await self.request(
            "POST", f"http://127.0.0.1:{self.ports[index]}{TRANSCRIPTIONS}", trickle(),
            {"Authorization": f"Bearer {KEY}", "Content-Type": payload.content_type})
        call.first, call.first_code = status, error_code(status, answer)
        return self.transcribed(call, clip, status, answer)

    def form(self, clip: int) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("model", "qasr-demo")
        form.add_field("file", self.clips[clip], filename="clip.wav", content_type="audio/wav")
        return form

    def transcribed(self, call: Call, clip: int, status: int | None, body: bytes) -> Call:
        call.final, call.ended = status, time.monotonic()
        if status == 200:
            call.text = json.loads(body)["text"]
            call.wrong_text = bool(self.expected) and call.text != self.expected[clip]
        self.calls.append(call)
        return call

    async def submit(self, phase: str, clip: int) -> Call:
        call = Call(phase, "submit", time.monotonic())
        body = json.dumps({"model": "qasr-demo", "input": {"file_url": f"{self.file_url}/clips/{clip}.wav"}})
        headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable",
                   "Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
        while True:  # the same Idempotency-Key each time: an answer lost to a dying replica finds its task
            status, answer = await self.post(SUBMIT, body, headers)
            call.tries += 1
            if call.tries == 1:
                call.first, call.first_code = status, error_code(status, answer)
            if status not in (None, 502, 503) or call.tries == MAX_TRIES:
                break
            await asyncio.sleep(RETRY_AFTER_S)
        call.final, call.ended = status, time.monotonic()
        if status == 200:
            call.task_id = json.loads(answer)["output"]["task_id"]
            self.tasks[call.task_id] = clip
        self.calls.append(call)
        return call

    async def load(self, phase: str, stop: asyncio.Event) -> None:
        """`--clients` clients until `stop`, each in turn transcribing the long clip three times and submitting a task
        (of a short clip) whose end it awaits, polling, as the SDKs' `wait` does."""
        async def client(number: int) -> None:
            turn = number
            while not stop.is_set():
                if turn % 4 == 3:
                    call = await self.submit(phase, turn % (len(self.clips) - 1))
                    if call.task_id is not None:
                        await self.wait_for_task(call.task_id, stop)
                else:
                    await self.transcribe(phase, len(self.clips) - 1)
                turn += 1

        await asyncio.gather(*(client(i) for i in range(self.args.clients)))

    async def wait_for_task(self, task_id: str, stop: asyncio.Event) -> None:
        assert self.nginx is not None
        while not stop.is_set():
            status, body = await self.get(f"{self.nginx.url}/api/v1/tasks/{task_id}")
            if status == 200 and json.loads(body)["output"]["task_status"] in FINAL:
                return
            await asyncio.sleep(0.2)

    async def metric(self, index: int, family_name: str) -> float:
        """Replica `index`'s metric, from its own /metrics: the sum of the family's samples (0 if none)."""
        status, body = await self.get(f"http://127.0.0.1:{self.ports[index]}/metrics", key=None)
        if status != 200:
            return 0.0
        for family in text_string_to_metric_families(body.decode()):
            if family.name == family_name:
                return sum(sample.value for sample in family.samples if sample.name in (family.name,
                                                                                          f"{family.name}_total"))
        return 0.0

    async def when_busy(self, index: int) -> None:
        """Until replica `index` transcribes a request (nginx routes to it)."""
        await self.until(index, "qasr_num_requests_running", "got a request to transcribe")

    async def until(self, index: int, family_name: str, what: str) -> None:
        deadline = time.monotonic() + self.args.timeout_s
        while await self.metric(index, family_name) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {index} never {what}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------------------------ phases

    async def check(self) -> None:
        warm_up = [await self.transcribe("check", clip) for clip in range(len(self.clips))]
        if any(call.final != 200 for call in warm_up):
            raise RuntimeError(f"the warm-up transcriptions got {[call.final for call in warm_up]}")
        self.expected = [call.text or "" for call in warm_up]  # every later answer is held to these
        wrong = await self.transcribe("check", 0, key="sk-wrong")
        status, body = await self.get(f"{self.nginx.url}/api/v1/tasks/any", key="sk-wrong")
        self.checks["wrong key: 401, OpenAI and DashScope shapes"] = (
            wrong.final == 401 and status == 401 and json.loads(body).get("code") == "InvalidApiKey")
        with (self.root / "keys").open("a") as keys:
            keys.write(f"{ADDED_KEY}\n")
        for server in self.servers:
            server.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        added = [await self.transcribe("check", 0, key=ADDED_KEY) for _ in range(2 * len(self.servers))]
        self.checks["key added to the key file works after SIGHUP"] = all(call.final == 200 for call in added)

    async def kill(self) -> float:
        assert self.nginx is not None
        logged = self.nginx.access_log_size()
        stop = asyncio.Event()
        loading = asyncio.create_task(self.load("kill", stop))
        await self.when_busy(0)
        killed_at = time.monotonic()
        await asyncio.to_thread(self.servers[0].kill)
        self.faults["SIGKILL"] += 1
        settled = time.monotonic() + 0.2  # the kernel has closed its sockets; nginx hears of it on next use
        await asyncio.sleep(self.args.phase_s)
        stop.set()
        await loading
        self.resent["kill"] = self.nginx.resent_since(logged, (TRANSCRIPTIONS, SUBMIT))
        for call in self.calls:
            if call.phase != "kill":
                continue
            if call.first is None:
                self.violations.append("kill: a request got no answer (a hang or a dropped connection)")
            elif call.started >= settled and call.first != 200:
                self.violations.append(f"kill: a {call.kind} sent after the kill got {call.first}")
            elif call.ended < killed_at and call.first != 200:
                self.violations.append(f"kill: a {call.kind} before the kill got {call.first}")
            elif call.first not in (200, 502, 503):
                self.violations.append(f"kill: a {call.kind} in flight at the kill got {call.first}, not 502/503")
        return killed_at

    async def drain(self, killed_at: float) -> None:
        await asyncio.to_thread(self.start_replica, 0)
        # nginx keeps a failed replica out for fail_timeout (counted in its whole seconds): the restarted one is
        # back in rotation once nginx sends it requests again
        await asyncio.sleep(max(0.0, killed_at + fail_timeout(self.args.nginx_config) + 1.5 - time.monotonic()))
        assert self.nginx is not None
        logged = self.nginx.access_log_size()
        stop = asyncio.Event()
        loading = asyncio.create_task(self.load("drain", stop))
        # nginx tries a replica back from fail_timeout with one request and counts it live once that has
        # succeeded; draining the other before then leaves nginx no live replica (its 502 "no live upstreams")
        await self.until(0, "qasr_requests", "answered a transcription after its restart")
        await self.when_busy(0)
        await self.when_busy(1)
        sending = asyncio.Event()
        slow = asyncio.create_task(self.slow_transcription(1, 0, self.args.drain_hold_s, sending))
        await sending.wait()
        await asyncio.sleep(0.2)  # its headers have reached the replica: in flight there
        server = self.servers[1]
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        self.faults["SIGTERM"] += 1
        health = asyncio.create_task(self.watch_health(1))
        exit_limit_s = self.args.drain_timeout_s + 30
        try:
            exit_code: int | None = await asyncio.to_thread(server.wait, exit_limit_s)
        except subprocess.TimeoutExpired:  # its stacks are in its log; killed, so its /health stops and the watch ends
            exit_code = None
        self.drain_s = time.monotonic() - signalled_at
        seen = await health
        await asyncio.sleep(self.args.phase_s)  # the survivor takes everything
        stop.set()
        await asyncio.gather(loading, slow)
        self.resent["drain"] = self.nginx.resent_since(logged, (TRANSCRIPTIONS, SUBMIT))
        if exit_code is None:
            self.violations.append(f"drain: the replica had not exited {exit_limit_s:g} s after SIGTERM (killed; its "
                                   f"threads' stacks are at the end of {server.log_path.name})")
        elif exit_code != 0:
            self.violations.append(f"drain: the replica exited with {exit_code}, not 0")
        if "503" not in seen:
            self.violations.append(f"drain: /health never answered 503 before the replica exited (saw {seen})")
        for call in self.calls:
            if call.phase != "drain":
                continue
            # a request the draining replica turned away (503 shutting_down) never started there: the client
            # retries it; any other failure of a request sent before the signal is one the drain should have let finish
            if call.final is None:
                self.violations.append("drain: a request got no answer (a hang or a dropped connection)")
            elif call.started < signalled_at and call.first != 200 and call.first_code != "shutting_down":
                self.violations.append(f"drain: a {call.kind} in flight at SIGTERM got {call.first} "
                                       f"({call.first_code})")
            elif call.final != 200:
                self.violations.append(f"drain: a {call.kind} sent after SIGTERM got {call.final} after retries")

    async def watch_health(self, index: int) -> str:
        """The statuses /health of replica `index` answered, in order and without repeats, until it stopped."""
        seen: list[str] = []
        while True:
            status, body = await self.get(f"http://127.0.0.1:{self.ports[index]}/health", key=None)
            if status is None:
                return " ".join(seen) + " gone"
            if not seen or seen[-1] != str(status):
                seen.append(str(status))
            await asyncio.sleep(0.01)

    async def finish_tasks(self, postgres: ThrowawayPostgres) -> int:
        """Waits for every accepted task; returns how many were lost (not SUCCEEDED with the right transcript)."""
        deadline = time.monotonic() + self.args.timeout_s * 2
        lost = 0
        for task_id, clip in self.tasks.items():
            while True:
                status, body = await self.get(f"{self.nginx.url}/api/v1/tasks/{task_id}")
                output = json.loads(body)["output"] if status == 200 else {}
                if output.get("task_status") in FINAL or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            if output.get("task_status") != "SUCCEEDED":
                self.violations.append(f"tasks: task {task_id} ended {output.get('task_status', status)}")
                lost += 1
                continue
            status, document = await self.get(output["result"]["transcription_url"], key=None)  # signed: no key
            text = json.loads(document)["transcripts"][0]["text"] if status == 200 else None
            if text != self.expected[clip]:
                self.violations.append(f"tasks: task {task_id}'s result is {text!r}, not {self.expected[clip]!r}")
                lost += 1
        import psycopg

        with psycopg.connect(self.database) as connection:
            rows = connection.execute("SELECT task_id, status, results FROM tasks").fetchall()
        stored = {task_id: (status, json.loads(results)) for task_id, status, results in rows}
        if set(stored) != set(self.tasks):
            self.violations.append(f"tasks: {len(stored)} tasks stored for {len(self.tasks)} accepted submits")
        for task_id, (status, results) in stored.items():
            if status != "SUCCEEDED" or len(results) != 1:
                self.violations.append(f"tasks: task {task_id} stored {status} with {len(results)} results")
        return lost

    def row(self, phase: str, lost: int | None = None) -> dict:
        calls = [call for call in self.calls if call.phase == phase]
        first = Counter(call.first for call in calls)
        return {"phase": phase, "requests": sum(call.kind == "transcription" for call in calls),
                "tasks_submitted": sum(call.kind == "submit" for call in calls),
                "faults": self.faults.get({"kill": "SIGKILL", "drain": "SIGTERM"}.get(phase, ""), 0),
                "status_200": first[200], "status_401": first[401], "status_502": first[502],
                "status_503": first[503], "resent": self.resent[phase],
                "retried": sum(call.tries > 1 for call in calls),
                "failed_after_retries": sum(call.final != 200 and call.final != 401 for call in calls),
                "hangs": first[None], "wrong_text": sum(call.wrong_text for call in calls),
                "tasks_lost": lost if lost is not None else 0,
                "violations": sum(v.startswith(phase) for v in self.violations)}


def error_code(status: int | None, body: bytes) -> str | None:
    """The `code` of an OpenAI or DashScope error body."""
    if status is None or status < 400:
        return None
    try:
        error = json.loads(body)
    except ValueError:
        return None  # e.g. nginx's own 502 page
    return (error.get("error") or error).get("code") if isinstance(error, dict) else None


def fail_timeout(config: Path) -> float:
    """The longest fail_timeout of the nginx config's upstream servers, in seconds."""
    return max(float(seconds) for seconds in re.findall(r"fail_timeout=(\d+)s", config.read_text()))


def clip_files(count: int) -> list[bytes]:
    """`count` held-out clips as WAV, and a long clip of them all after another (the load's)."""
    rows = [json.loads(line) for line in (HELDOUT / "manifest.jsonl").read_text().splitlines()[:count]]
    samples = [load_audio(HELDOUT / row["file"]) for row in rows]
    long = np.concatenate(samples * int(np.ceil(LONG_CLIP_SECONDS * SAMPLE_RATE / sum(map(len, samples)))))
    files = []
    for audio in [*samples, long[:int(LONG_CLIP_SECONDS * SAMPLE_RATE)]]:
        buffer = io.BytesIO()
        sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        files.append(buffer.getvalue())
    return files


async def run_faults(args: argparse.Namespace) -> tuple[list[dict], Run]:
    """The phases; returns the rows, and the run with its violations, checks and the drain's length."""
    with tempfile.TemporaryDirectory(prefix="qasr-faults-") as folder:
        run = Run(args, Path(folder), clips=clip_files(args.clips))
        async def clip(request: web.Request) -> web.Response:
            return web.Response(body=run.clips[int(request.match_info["index"])], content_type="audio/wav")

        files = web.Application()
        files.router.add_get("/clips/{index}.wav", clip)
        file_server = web.AppRunner(files)
        await file_server.setup()
        site = web.TCPSite(file_server, "127.0.0.1", 0)
        await site.start()
        run.file_url = f"http://127.0.0.1:{file_server.addresses[0][1]}"
        postgres = await asyncio.to_thread(ThrowawayPostgres)
        try:
            await asyncio.to_thread(run.start_fleet, postgres)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as run.session:
                await run.check()
                killed_at = await run.kill()
                await run.drain(killed_at)
                lost = await run.finish_tasks(postgres)
        finally:
            await asyncio.to_thread(run.stop_fleet)
            for log in [*sorted(run.root.glob("replica-*.log")), run.root / "nginx" / "error.log"]:  # kept
                if log.exists():
                    (args.out_dir / f"faults-{log.parent.name if log.name == 'error.log' else ''}{log.name}"
                     ).write_bytes(log.read_bytes())
            await asyncio.to_thread(postgres.stop)
            await file_server.cleanup()
        run.violations += [f"{call.phase}: a transcription's text differed from the warm-up's" for call in run.calls
                           if call.wrong_text]
        rows = [run.row("check"), run.row("kill"), run.row("drain"), run.row("tasks", lost)]
        rows[-1]["tasks_submitted"] = len(run.tasks)
        return rows, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=2, help="qasr serve processes behind nginx (at least 2)")
    parser.add_argument("--clients", type=int, default=12, help="clients sending requests at once")
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds of load after the kill, and after the "
                        "drained replica has exited")
    parser.add_argument("--clips", type=int, default=4, help="held-out clips the tasks transcribe")
    parser.add_argument("--task-lease-s", type=float, default=3.0, help="the replicas' --task-lease-s: how soon a "
                        "killed replica's tasks run elsewhere")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--drain-hold-s", type=float, default=8.0, help="how long a slow client's upload to the "
                        "drained replica takes, holding its drain open: requests sent meanwhile must go around it")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="an answer later than this is a hang")
    parser.add_argument("--nginx-config", type=Path, default=NGINX_CONFIG, help="the http-level nginx file "
                        "(default: the repository's deploy/nginx/qasr.conf)")
    add_output_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if args.replicas < 2:
        raise SystemExit("qasr bench faults: --replicas must be at least 2 (one is killed, another drained)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows, run = asyncio.run(run_faults(args))
    violations, checks = run.violations, run.checks
    print_table(rows)
    print(f"the drained replica exited {run.drain_s:.1f} s after SIGTERM")
    for name, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
    for violation in violations:
        print(f"violation: {violation}")
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
              if isinstance(value, str | int | float | Path)}
    config.update(checks=checks, violations=violations, drain_s=round(run.drain_s, 2))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what the launched replicas ran on
    print(f"results: {write_results('faults', device, config, rows, args.out_dir)}")
    return 0 if not violations and all(checks.values()) else 1
