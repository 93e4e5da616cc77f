"""What the server holds at once: seconds of decoded audio (an upload past the limit is a 429; tasks wait in the
store) and bytes of downloads (a download past the limit waits)."""

import asyncio
import io
import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from qasr.engine import AsyncEngine, EngineConfig
from qasr.serve.app import create_app
from qasr.serve.budget import AudioBudget, AudioBudgetExceeded, ByteBudget
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import PENDING, SUCCEEDED


def test_audio_claims_count_until_released() -> None:
    budget = AudioBudget(10.0)
    upload, task = budget.claim(refusable=True), budget.claim(refusable=False)
    upload(6.0)
    with pytest.raises(AudioBudgetExceeded, match="6 s of audio in flight, its limit is 10 s"):
        upload(5.0)
    task(7.0)  # an accepted task is counted, never refused
    assert budget.used_s == 13.0 and budget.full
    upload.release()
    assert budget.used_s == 7.0 and not budget.full
    with pytest.raises(AudioBudgetExceeded, match="ended"):  # a decode still running for a request that ended
        upload(1.0)
    task.release()
    assert budget.used_s == 0.0


def test_downloads_wait_for_room_and_keep_only_what_they_got() -> None:
    async def run() -> list[str]:
        budget, events = ByteBudget(100), []

        async def download(name: str, size: int, hold: asyncio.Event) -> None:
            async with budget.reserve(100) as reservation:  # the largest file's worth, before starting
                events.append(f"{name} started")
                reservation.shrink(size)
                await hold.wait()
            events.append(f"{name} done")

        first_hold, second_hold = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(download("first", 30, first_hold))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(download("second", 70, second_hold))
        await asyncio.sleep(0.01)
        assert budget.used_bytes == 30 and events == ["first started"]  # 30 + 100 > 100: the second waits
        first_hold.set()
        await asyncio.sleep(0.01)
        assert budget.used_bytes == 70 and events[-1] == "second started"
        second_hold.set()
        await asyncio.gather(first, second)
        assert budget.used_bytes == 0
        return events

    assert asyncio.run(run()) == ["first started", "first done", "second started", "second done"]


def wav(seconds: float, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.random.default_rng(0).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32), rate,
             format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(live_server):
    live = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=4)),
                                  ServerOptions(task_db=":memory:", max_audio_seconds=4,
                                                max_audio_seconds_in_flight=4)))
    yield live
    live.close()


def transcribe(url: str, audio: bytes, http) -> tuple[int, dict, dict]:
    import aiohttp

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("file", audio, filename="a.wav", content_type="audio/wav")
        return data

    status, headers, body = http("POST", url + "/v1/audio/transcriptions", form)
    return status, headers, json.loads(body)


def test_a_tiny_file_that_claims_a_tiny_sample_rate_is_refused(server, http) -> None:
    status, _, body = transcribe(server.url, wav(10_800, 1), http)  # 21.6 KB at 1 Hz: three hours at 16 kHz
    assert status == 400 and body["error"]["code"] == "invalid_audio"
    assert "sample rate of 1 Hz" in body["error"]["message"]


def test_uploads_past_the_audio_in_flight_are_429_until_it_drains(server, heldout, http) -> None:
    rows = [json.loads(line) for line in (heldout / "manifest.jsonl").read_text().splitlines()]
    held_row = next(row for row in rows if 2.9 <= row["seconds"] < 4)  # fits the 4 s limit alone
    other_row = next(row for row in rows if row is not held_row and row["seconds"] > 4 - held_row["seconds"])
    first, second = (heldout / held_row["file"]).read_bytes(), (heldout / other_row["file"]).read_bytes()
    llm, gate = server.state.engine.engine, threading.Event()
    step = llm.step

    def held_step():
        gate.wait(30)
        return step()

    llm.step = held_step
    try:
        answers: list[tuple[int, dict, dict]] = []
        held = threading.Thread(target=lambda: answers.append(transcribe(server.url, first, http)))
        held.start()
        deadline = time.monotonic() + 20
        while server.state.audio_budget.used_s < 2.9:  # the first upload is decoded and waits for the engine
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, headers, body = transcribe(server.url, second, http)
        assert status == 429 and headers["Retry-After"] == "1" and body["error"]["code"] == "too_much_audio"
        assert "limit is 4 s" in body["error"]["message"]
    finally:
        gate.set()
        llm.step = step
    held.join(30)
    assert answers[0][0] == 200
    assert server.state.audio_budget.used_s == 0
    assert transcribe(server.url, second, http)[0] == 200


def test_tasks_wait_in_the_store_while_the_audio_budget_is_full(server, heldout, live_server, submit, query,
                                                                wait_done) -> None:
    from aiohttp import web

    async def clip(request: web.Request) -> web.FileResponse:
        return web.FileResponse(heldout / request.match_info["name"])

    files = web.Application()
    files.router.add_get("/{name}", clip)
    file_server = live_server(files)
    tasks = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=4)),
                                   ServerOptions(task_db=":memory:", allow_private_urls=True)))
    try:
        budget = tasks.state.audio_budget
        budget.used_s = budget.limit_s  # uploads hold all the audio the server may
        task_id = submit(tasks, f"{file_server.url}/test_seen-000000.opus")
        time.sleep(2.5)  # two rounds of the worker
        assert query(tasks, task_id)["output"]["task_status"] == PENDING
        budget.used_s = 0.0
        tasks.loop.call_soon_threadsafe(tasks.state.worker.wake_up)
        assert wait_done(tasks, task_id)["output"]["task_status"] == SUCCEEDED
        assert budget.used_s == 0.0
    finally:
        tasks.close()
        file_server.close()


def test_a_cancelled_download_leaves_no_bytes_behind() -> None:
    async def run() -> int:
        budget = ByteBudget(100)

        async def download(size: int) -> None:
            async with budget.reserve(100) as reservation:
                await asyncio.sleep(0.01)
                reservation.shrink(size)
                await asyncio.sleep(10)

        holding = asyncio.create_task(download(40))
        waiting = asyncio.create_task(download(40))  # waits for room the whole time
        await asyncio.sleep(0.05)
        for task in (waiting, holding):
            task.cancel()
        await asyncio.gather(holding, waiting, return_exceptions=True)
        return budget.used_bytes

    assert asyncio.run(run()) == 0
