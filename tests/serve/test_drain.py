"""Graceful drain: /health turns 503 at once, new requests get a 503 another replica can take, requests in flight
finish, running tasks go back to PENDING; a second signal (or the drain timeout) ends what is left with a 503."""

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from aiohttp import web

from qasr.engine import AsyncEngine, EngineConfig, TranscriptionRequest
from qasr.engine.audio import load_audio
from qasr.serve.app import create_app, drain_and_stop
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import PENDING, RUNNING

BOUNDARY = "qasr-drain-test"


@pytest.fixture(scope="module")
def clip(heldout) -> dict:
    row = json.loads((heldout / "manifest.jsonl").read_text().splitlines()[0])
    samples = load_audio(heldout / row["file"])
    wav = io.BytesIO()
    sf.write(wav, samples, 16000, format="WAV", subtype="PCM_16")
    return {"samples": load_audio(wav.getvalue()), "wav": wav.getvalue()}


class HeldUpload:
    """A transcription request whose upload stops halfway until `finish()`: a request in flight for as long as a
    test wants. `result()` is its (status, headers, body)."""

    def __init__(self, url: str, wav: bytes, http):
        head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nqasr-demo\r\n"
                f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                "Content-Type: audio/wav\r\n\r\n").encode()
        body = head + wav + f"\r\n--{BOUNDARY}--\r\n".encode()
        self.release = threading.Event()

        async def upload():
            yield body[:len(body) // 2]
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            yield body[len(body) // 2:]

        self.answer: tuple | None = None

        def send() -> None:
            self.answer = http("POST", url + "/v1/audio/transcriptions", upload,
                               {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def finish(self) -> tuple[int, dict, bytes]:
        self.release.set()
        self.thread.join(timeout=30)
        assert self.answer is not None, "the held request never got an answer"
        return self.answer


def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture
def hanging_files(live_server):
    """A file server whose /hang never answers (until the test ends): a task stays RUNNING on it."""
    done = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await done.wait()
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/hang.wav", hang)
    live = live_server(app)
    yield live
    live.loop.call_soon_threadsafe(done.set)
    live.close()


def start_drain(server, now: asyncio.Event | None = None):
    return asyncio.run_coroutine_threadsafe(drain_and_stop(server.app, now or asyncio.Event()), server.loop)


def test_a_drain_lets_requests_in_flight_finish_and_turns_new_ones_away(live_server, clip: dict, http,
                                                                         metric_values, tmp_path: Path) -> None:
    server = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=2)),
                                    ServerOptions(task_db=str(tmp_path / "tasks.sqlite3"))))
    try:
        expected = server.call(server.state.engine.transcribe(TranscriptionRequest(clip["samples"]))).text
        held = HeldUpload(server.url, clip["wav"], http)
        wait_for(lambda: server.state.drain.in_flight == 1)
        draining = start_drain(server)
        status, headers, body = http("GET", server.url + "/health")
        assert status == 503 and json.loads(body) == {"status": "draining"}

        status, headers, body = http("GET", server.url + "/v1/models")
        assert status == 503 and headers["Retry-After"] == "1" and headers.get("Connection") == "close"
        assert json.loads(body)["error"]["code"] == "shutting_down"
        status, headers, body = http("POST", server.url + "/api/v1/services/audio/asr/transcription", b"{}",
                                     {"X-DashScope-Async": "enable"})
        assert status == 503 and json.loads(body)["code"] == "shutting_down"
        assert http("GET", server.url + "/metrics")[0] == 200  # scrapes go on while draining
        assert not draining.done()  # it waits for the upload

        status, _, body = held.finish()
        assert status == 200 and json.loads(body)["text"] == expected, body
        draining.result(timeout=10)
        assert not server.state.engine.is_running  # stopped once nothing was left in flight
        assert metric_values(server.url)[("qasr_engine_up", ())] == 0
    finally:
        server.close()


@pytest.mark.parametrize("cut_short_by", ["timeout", "second signal"])
def test_what_a_drain_leaves_gets_a_503_and_its_tasks_go_back_to_pending(live_server, clip: dict, http,
                                                                          hanging_files, submit, query,
                                                                          tmp_path: Path, cut_short_by: str) -> None:
    timeout = 0.3 if cut_short_by == "timeout" else 60
    server = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=2)), ServerOptions(
        task_db=str(tmp_path / "tasks.sqlite3"), allow_private_urls=True, drain_timeout_s=timeout)))
    try:
        task_id = submit(server, f"{hanging_files.url}/hang.wav")
        wait_for(lambda: query(server, task_id)["output"]["task_status"] == RUNNING)
        held = HeldUpload(server.url, clip["wav"], http)
        wait_for(lambda: server.state.drain.in_flight == 1)
        now = asyncio.Event()
        started = time.monotonic()
        draining = start_drain(server, now)
        if cut_short_by == "second signal":
            time.sleep(0.2)
            server.loop.call_soon_threadsafe(now.set)
        wait_for(lambda: not server.state.engine.is_running)  # the drain is over, the upload still held
        assert time.monotonic() - started < 5
        status, headers, body = held.finish()
        assert status == 503 and json.loads(body)["error"]["code"] == "shut_down_in_flight", body
        draining.result(timeout=10)
        task = server.call(server.state.tasks.run(server.state.tasks.get, task_id))
        assert task.status == PENDING and task.owner is None  # for another replica to run
    finally:
        server.close()


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_server_serves_on(serve_process, http,
                                                                              tmp_path: Path) -> None:
    """What an operator does with a server that hangs (a drain that never ends), and what `qasr bench faults` does
    before it kills a replica that outlived its drain: `kill -USR1`, then read the stacks in the log."""
    server = serve_process(log_path=tmp_path / "serve.log")
    try:
        server.dump_stacks()
        assert http("GET", server.url + "/health")[0] == 200
    finally:
        assert server.stop() == 0
    log = server.log()
    assert log.count("(most recent call first)") >= 2  # the event loop's thread and the engine's, at least
    assert "async_engine.py" in log and "in _loop" in log
