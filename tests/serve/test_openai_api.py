"""The HTTP server on loopback: the official openai SDK for the happy paths, plain aiohttp for the errors."""

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jiwer
import openai
import pytest

from qasr.engine import AsyncEngine, EngineConfig, RequestOutput, TranscriptionRequest
from qasr.engine.audio import load_audio
from qasr.serve import openai_api
from qasr.serve.app import create_app
from qasr.serve.options import ServerOptions
from qasr.serve.state import STATE

MAX_UPLOAD_MB = 0.25


@pytest.fixture(scope="module")
def engine() -> AsyncEngine:
    # no forced aligner: the plain surface, one segment per audio piece and word timestamps a 400 (with one:
    # test_words.py)
    return AsyncEngine(EngineConfig(max_num_seqs=8, aligner_model="none"))


@pytest.fixture(scope="module")
def server(engine: AsyncEngine, live_server):
    live = live_server(create_app(engine, ServerOptions(max_upload_mb=MAX_UPLOAD_MB, task_db=":memory:")))
    yield live
    live.close()


@pytest.fixture(scope="module")
def clips(server, engine: AsyncEngine, heldout) -> list[dict]:
    """Eight held-out clips with what the engine itself transcribes for each (the server must match it)."""
    rows = [json.loads(line) for line in (heldout / "manifest.jsonl").read_text().splitlines()[:8]]

    async def transcribe_all() -> list[str]:
        results = await asyncio.gather(*(engine.transcribe(TranscriptionRequest(load_audio(heldout / row["file"])))
                                         for row in rows))
        return [result.text for result in results]

    for row, text in zip(rows, server.call(transcribe_all())):
        row["bytes"] = (heldout / row["file"]).read_bytes()
        row["engine_text"] = text
    return rows


def upload(clip: dict) -> tuple[str, bytes, str]:
    return (clip["file"], clip["bytes"], "audio/ogg")


def form(file: bytes | None, fields: dict[str, str] | None = None) -> Callable[[], aiohttp.FormData]:
    def build() -> aiohttp.FormData:
        data = aiohttp.FormData()
        for name, value in (fields or {}).items():
            data.add_field(name, value)
        if file is not None:
            data.add_field("file", file, filename="clip.opus", content_type="audio/ogg")
        return data

    return build


def assert_openai_error(response: tuple[int, dict, bytes], status: int, param: str | None = None,
                        code: str | None = None) -> dict:
    got, headers, body = response
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("requests" if status == 429 else "server_error" if status >= 500 else
                             "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_every_response_format_through_the_sdk(server, clips: list[dict]) -> None:
    client, clip = server.client(), clips[0]
    expected = clip["engine_text"]

    result = client.audio.transcriptions.create(file=upload(clip), model="qasr-demo")
    assert result.text == expected
    assert result.usage.type == "duration" and result.usage.seconds == math.ceil(clip["seconds"])
    assert [language.code for language in result.languages] == ["en"]

    assert client.audio.transcriptions.create(file=upload(clip), model="qasr-demo",
                                              response_format="text") == expected + "\n"

    verbose = client.audio.transcriptions.create(file=upload(clip), model="qasr-demo", response_format="verbose_json",
                                                 timestamp_granularities=["segment"], temperature=0.0)
    assert verbose.text == expected and verbose.language == "english"
    assert verbose.duration == pytest.approx(clip["seconds"], abs=0.01)
    [segment] = verbose.segments
    assert (segment.id, segment.seek, segment.start, segment.text) == (0, 0, 0.0, expected)
    assert segment.end == pytest.approx(verbose.duration) and segment.compression_ratio > 0

    milliseconds = round(verbose.duration * 1000)  # the clip's length, 3.072 s
    end = f"00:00:{milliseconds // 1000:02d}{{}}{milliseconds % 1000:03d}"
    srt = client.audio.transcriptions.create(file=upload(clip), model="qasr-demo", response_format="srt")
    assert srt == f"1\n00:00:00,000 --> {end.format(',')}\n{expected}\n\n"  # a blank line ends every cue
    vtt = client.audio.transcriptions.create(file=upload(clip), model="qasr-demo", response_format="vtt")
    assert vtt == f"WEBVTT\n\n00:00:00.000 --> {end.format('.')}\n{expected}\n"


def test_streamed_deltas_add_up_to_the_final_text(server, clips: list[dict]) -> None:
    clip = clips[1]
    events = list(server.client().audio.transcriptions.create(file=upload(clip), model="qasr-demo", stream=True))
    deltas = [event.delta for event in events[:-1]]
    assert all(event.type == "transcript.text.delta" for event in events[:-1]) and len(deltas) > 1
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert "".join(deltas) == done.text == clip["engine_text"]
    assert [language.code for language in done.languages] == ["en"]  # as the json response gives them
    usage = done.usage
    assert usage.output_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens

    async def stream_async() -> list:
        async with server.async_client() as client:
            stream = await client.audio.transcriptions.create(file=upload(clip), model="qasr-demo", stream=True,
                                                              response_format="text")
            return [event async for event in stream]

    assert [e.model_dump() for e in asyncio.run(stream_async())] == [e.model_dump() for e in events]


def test_raw_stream_is_openai_sse_and_ends_with_done(server, clips: list[dict], http) -> None:
    status, headers, body = http("POST", server.url + "/v1/audio/transcriptions",
                                 form(clips[0]["bytes"], {"stream": "true"}))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])


def test_a_stream_waiting_for_its_first_token_sends_keep_alives(server, engine: AsyncEngine,
                                                               clips: list[dict], http) -> None:
    llm, options = engine.engine, server.state.options
    step, interval = llm.step, options.sse_keepalive_s
    slow_steps = iter(range(4))

    def slow_step():  # the first steps stall, as behind a long queue
        if next(slow_steps, None) is not None:
            time.sleep(0.3)
        return step()

    llm.step, options.sse_keepalive_s = slow_step, 0.05
    try:
        status, _, body = http("POST", server.url + "/v1/audio/transcriptions",
                               form(clips[1]["bytes"], {"stream": "true"}))
        slow_steps = iter(range(4))
        with server.client(max_retries=0).audio.transcriptions.create(
                file=upload(clips[1]), model="qasr-demo", stream=True) as events:
            parsed = [event for event in events]
    finally:
        llm.step, options.sse_keepalive_s = step, interval
    assert status == 200
    events = body.decode().split("\n\n")
    first_data = next(i for i, event in enumerate(events) if event.startswith("data: "))
    assert first_data > 0 and all(event == ": keep-alive" for event in events[:first_data])
    deltas = [json.loads(e[6:])["delta"] for e in events if e.startswith("data: {") and '"delta"' in e]
    assert "".join(deltas) == clips[1]["engine_text"]
    assert parsed[-1].type == "transcript.text.done" and parsed[-1].text == clips[1]["engine_text"]


def test_language_prompt_and_temperature_are_accepted(server, engine: AsyncEngine, heldout, clips: list[dict]) -> None:
    """The prompt reaches the model as its context: the server's text is the engine's with that context (how well
    the demo model reads with one: tests/engine/test_demo_model.py)."""
    client, clip = server.client(), clips[2]
    prompt = "timers, alarms and reminders"
    with_context = server.call(engine.transcribe(TranscriptionRequest(
        load_audio(heldout / clip["file"]), language="English", context=prompt))).text
    for language in ("en", "English"):
        result = client.audio.transcriptions.create(file=upload(clip), model="qasr-demo", language=language,
                                                    prompt=prompt)
        assert result.text == with_context
    sampled = client.audio.transcriptions.create(file=upload(clip), model="qasr-demo", temperature=0.7,
                                                 extra_body={"max_completion_tokens": "4"})
    assert isinstance(sampled.text, str)


def test_concurrent_requests_match_the_engine(server, clips: list[dict]) -> None:
    async def run_all() -> list[str]:
        async with server.async_client() as client:
            async def one(i: int, clip: dict) -> str:
                if i % 2:
                    stream = await client.audio.transcriptions.create(file=upload(clip), model="qasr-demo",
                                                                      stream=True)
                    return "".join([event.delta async for event in stream if event.type.endswith("delta")])
                return (await client.audio.transcriptions.create(file=upload(clip), model="qasr-demo")).text

            return await asyncio.gather(*(one(i, clip) for i, clip in enumerate(clips)))

    texts = asyncio.run(run_all())
    assert texts == [clip["engine_text"] for clip in clips]
    assert jiwer.wer([c["text"].lower() for c in clips], [t.lower() for t in texts]) < 0.2


def test_models_health_and_version(server, http) -> None:
    client = server.client()
    assert [model.id for model in client.models.list()] == ["qasr-demo"]
    card = client.models.retrieve("qasr-demo")
    assert card.owned_by == "qasr" and card.model_extra["max_model_len"] > 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-1")
    status, _, body = http("GET", server.url + "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, body = http("GET", server.url + "/version")
    assert status == 200 and json.loads(body)["version"]


def test_metrics_move_after_requests(server, clips: list[dict], http, metric_values) -> None:
    before = metric_values(server.url)
    server.client().audio.transcriptions.create(file=upload(clips[3]), model="qasr-demo")
    http("POST", server.url + "/v1/audio/transcriptions", form(b"not audio at all"))
    after = metric_values(server.url)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert moved("qasr_requests_total", status="success") == 1
    assert moved("qasr_requests_total", status="client_error") == 1
    assert moved("qasr_audio_input_seconds_total") == pytest.approx(clips[3]["seconds"], abs=0.01)
    assert moved("qasr_generation_tokens_total") > 0 and moved("qasr_prompt_tokens_total") > 0
    for histogram in ("qasr_e2e_request_latency_seconds", "qasr_time_to_first_token_seconds",
                      "qasr_request_queue_time_seconds", "qasr_request_real_time_factor"):
        assert moved(histogram + "_count") == 1
    for gauge in ("qasr_num_requests_running", "qasr_num_requests_waiting", "qasr_kv_cache_usage_perc"):
        assert after[(gauge, ())] >= 0
    assert ("qasr_num_preemptions_total", ()) in after


@pytest.mark.parametrize(("fields", "file", "param", "code"), [
    ({"model": "qasr-demo"}, None, "file", None),
    ({}, b"this is not audio, it is text", "file", "invalid_audio"),
    ({}, bytes(range(256)) * 8, "file", "invalid_audio"),
    ({}, b"", "file", "invalid_audio"),
    ({"language": "klingon"}, ..., "language", None),
    ({"temperature": "3"}, ..., "temperature", None),
    ({"temperature": "warm"}, ..., "temperature", None),
    ({"response_format": "docx"}, ..., "response_format", None),
    ({"response_format": "srt", "stream": "true"}, ..., "response_format", None),
    ({"stream": "maybe"}, ..., "stream", None),
    ({"timestamp_granularities[]": "word"}, ..., "timestamp_granularities[]", None),
    ({"max_completion_tokens": "0"}, ..., "max_completion_tokens", None),
    ({"max_completion_tokens": "²"}, ..., "max_completion_tokens", None),  # "²".isdigit(), but not int("²")
    ({"prompt": "x" * 4097}, ..., "prompt", "prompt_too_long"),
    ({"prompt": "漢" * 1000}, ..., "prompt", "prompt_too_long"),  # 1,000 characters, 3,000 tokens
    ({"prompt": "<|im_end|>"}, ..., "prompt", None),  # the engine's refusal, naming the field
])
def test_bad_fields_are_400(server, clips: list[dict], fields: dict, file: Any, param: str | None,
                            code: str | None, http) -> None:
    file = clips[0]["bytes"] if file is ... else file
    response = http("POST", server.url + "/v1/audio/transcriptions", form(file, fields))
    assert_openai_error(response, 400, param, code)


def test_other_client_errors(server, clips: list[dict], http) -> None:
    url = server.url + "/v1/audio/transcriptions"
    assert_openai_error(http("POST", url, form(clips[0]["bytes"], {"model": "whisper-1"})), 404, "model",
                        "model_not_found")
    assert_openai_error(http("POST", url, json.dumps({"file": "x"}), {"Content-Type": "application/json"}), 400)
    with aiohttp.MultipartWriter("form-data") as text_instead_of_file:
        text_instead_of_file.append("just text").set_content_disposition("form-data", name="file")
    assert_openai_error(http("POST", url, text_instead_of_file), 400, "file")

    def granularity_as_a_file() -> aiohttp.FormData:
        data = form(clips[0]["bytes"])()
        data.add_field("timestamp_granularities[]", b"word", filename="granularity.txt")
        return data
    error = assert_openai_error(http("POST", url, granularity_as_a_file), 400, "timestamp_granularities[]")
    assert error["message"] == "'timestamp_granularities[]' must be a text field, not a file."  # no object dump
    assert_openai_error(http("GET", server.url + "/v1/audio/nothing"), 404)
    error = assert_openai_error(http("GET", url), 405)
    assert "POST" in error["message"]

    with pytest.raises(openai.NotFoundError) as not_found:
        server.client(max_retries=0).audio.transcriptions.create(file=upload(clips[0]), model="gpt-4o-transcribe")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="Word timestamps"):
        server.client(max_retries=0).audio.transcriptions.create(
            file=upload(clips[0]), model="qasr-demo", response_format="verbose_json", timestamp_granularities=["word"])


def test_malformed_forms_are_400(server, clips: list[dict], http) -> None:
    def part(name: str, value: bytes, *headers: str, filename: str | None = None) -> bytes:
        disposition = f'Content-Disposition: form-data; name="{name}"' + (f'; filename="{filename}"' * bool(filename))
        return b"--b\r\n" + "\r\n".join((disposition, *headers)).encode() + b"\r\n\r\n" + value + b"\r\n"

    audio = part("file", clips[0]["bytes"], filename="a.opus")
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    for body in (part("model", b"qasr-demo", "Content-Type: text/plain; charset=bogus") + audio,  # LookupError
                 part("language", b"en", "Content-Transfer-Encoding: x-bogus") + audio,  # RuntimeError
                 part("file", clips[0]["bytes"], "Content-Transfer-Encoding: x-bogus", filename="a.opus"),
                 audio + part("_charset_", b"bogus") + part("model", b"qasr-demo"),
                 part("prompt", b"\xff\xfe") + audio):
        response = http("POST", server.url + "/v1/audio/transcriptions", body + b"--b--\r\n", multipart)
        assert_openai_error(response, 400)
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded; charset=bogus"}
    assert_openai_error(http("POST", server.url + "/v1/audio/transcriptions", b"a=b", urlencoded), 400)


def test_audio_longer_than_max_audio_seconds_is_400(server, clips: list[dict], http) -> None:
    options = server.app[STATE].options
    allowed, options.max_audio_seconds = options.max_audio_seconds, 0.5
    try:
        response = http("POST", server.url + "/v1/audio/transcriptions", form(clips[0]["bytes"]))
    finally:
        options.max_audio_seconds = allowed
    error = assert_openai_error(response, 400, "file", "audio_too_long")
    assert "0.5 s" in error["message"]


def test_uploads_over_the_limit_are_413(server, http) -> None:
    url, limit = server.url + "/v1/audio/transcriptions", int(MAX_UPLOAD_MB * (1 << 20))
    # with a Content-Length, rejected before the body is read; just over the file limit, after reading it
    assert_openai_error(http("POST", url, form(b"\0" * (2 * limit))), 413, code="request_too_large")
    assert_openai_error(http("POST", url, form(b"\0" * (limit + 1))), 413, code="request_too_large")

    async def chunked_body():  # no Content-Length: aiohttp stops reading at the app's body limit
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
        for _ in range(8):
            yield b"\0" * limit
        yield b"\r\n--b--\r\n"

    response = http("POST", url, chunked_body, {"Content-Type": "multipart/form-data; boundary=b"})
    assert_openai_error(response, 413, code="request_too_large")


def test_unexpected_errors_are_500_without_internals(server, clips: list[dict],
                                                     monkeypatch: pytest.MonkeyPatch, http, metric_values) -> None:
    def broken(_: bytes) -> None:
        raise KeyError("secret internal detail")

    monkeypatch.setattr("qasr.serve.openai_api.load_audio", broken)
    before = metric_values(server.url)[("qasr_requests_total", (("status", "server_error"),))]
    response = http("POST", server.url + "/v1/audio/transcriptions", form(clips[0]["bytes"]))
    error = assert_openai_error(response, 500)
    assert "secret" not in response[2].decode() and "Traceback" not in error["message"]
    assert metric_values(server.url)[("qasr_requests_total", (("status", "server_error"),))] == before + 1


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_client_disconnect_mid_stream_aborts_the_engine_request(server, engine: AsyncEngine,
                                                                clips: list[dict], metric_values) -> None:
    llm, gate, first_delta = engine.engine, threading.Event(), threading.Event()
    aborted: dict[str, object] = {}
    step, abort = llm.step, llm.abort

    def held_step():  # once a delta is out, the engine stalls until the client has gone
        if first_delta.is_set():
            gate.wait(30)
        outputs = step()
        if any(output.delta and not output.finished for output in outputs):
            first_delta.set()
        return outputs

    def recording_abort(request_id: str):
        aborted[request_id] = output = abort(request_id)
        return output

    llm.step, llm.abort = held_step, recording_abort
    before = metric_values(server.url)
    try:
        with server.client(max_retries=0).audio.transcriptions.with_streaming_response.create(
                file=upload(clips[0]), model="qasr-demo", stream=True) as response:
            request_id = response.headers["X-Request-Id"]
            first = next(iter(response.parse()))
            assert first.type == "transcript.text.delta"
        wait_for(lambda: server.state.in_flight == 0)  # the handler was cancelled
    finally:
        gate.set()
        wait_for(lambda: engine.num_unfinished == 0)
        llm.step, llm.abort = step, abort
    assert aborted.get(request_id) is not None  # the request was still running when it was aborted
    after = metric_values(server.url)
    key = ("qasr_requests_total", (("status", "aborted"),))
    assert after[key] == before[key] + 1
    assert after[("qasr_requests_total", (("status", "success"),))] == \
        before[("qasr_requests_total", (("status", "success"),))]


def test_full_queue_is_429_and_a_dead_engine_is_503(clips: list[dict], live_server, http) -> None:
    small = AsyncEngine(EngineConfig(max_num_seqs=1))
    live = live_server(create_app(small, ServerOptions(max_queued_requests=0, served_model_names=["a", "b"],
                                                      task_db=":memory:")))
    try:
        gate, step = threading.Event(), small.engine.step
        small.engine.step = lambda: gate.wait(30) and step()
        holder = threading.Thread(target=lambda: live.client().audio.transcriptions.create(
            file=upload(clips[0]), model="b"))
        holder.start()
        try:
            wait_for(lambda: small.num_unfinished == 1)
            status, headers, body = http("POST", live.url + "/v1/audio/transcriptions", form(clips[0]["bytes"]))
            assert_openai_error((status, headers, body), 429, code="too_many_requests")
            assert int(headers["Retry-After"]) >= 1
            with pytest.raises(openai.RateLimitError):
                live.client(max_retries=0).audio.transcriptions.create(file=upload(clips[0]), model="a")
        finally:
            gate.set()
            holder.join(30)
        assert live.client().audio.transcriptions.create(file=upload(clips[0]), model="a").text

        small.shutdown()  # as if the engine thread had died
        status, headers, body = http("GET", live.url + "/health")
        assert_openai_error((status, headers, body), 503)
        assert int(headers["Retry-After"]) > 0
        assert_openai_error(http("POST", live.url + "/v1/audio/transcriptions", form(clips[0]["bytes"])), 503,
                            code="engine_unavailable")
    finally:
        live.close()


def test_stalled_uploads_neither_fill_the_queue_nor_hang(clips: list[dict], live_server) -> None:
    """Connections that send headers and stop do not count toward the 429 limit, and get 408 in time."""
    live = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=1)),
                                 ServerOptions(max_queued_requests=0, upload_timeout_s=1.5, task_db=":memory:")))
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"a.wav\"\r\n\r\nRIFF")

    async def stall() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(live.url.rsplit(":", 1)[1]))
        writer.write(head)
        await writer.drain()
        return reader, writer

    async def run() -> list[bytes]:
        stalled = [await stall() for _ in range(3)]
        await asyncio.sleep(0.3)
        answers = []
        for reader, writer in stalled:
            got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(next(line for line in got.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                         .split(b":")[1])
            answers.append(got + await asyncio.wait_for(reader.readexactly(length), 10))
            writer.close()
        return answers

    try:
        stalls = threading.Thread(target=lambda: answers.extend(asyncio.run(run())))
        answers: list[bytes] = []
        stalls.start()
        time.sleep(0.6)  # three uploads stalled, with room for one request in flight
        assert live.client(max_retries=0).audio.transcriptions.create(file=upload(clips[0]), model="qasr-demo").text
        stalls.join(15)
        assert len(answers) == 3
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    finally:
        live.close()


def test_a_stream_that_fails_then_loses_its_client_counts_once(server, clips: list[dict],
                                                               monkeypatch: pytest.MonkeyPatch, http,
                                                               metric_values) -> None:
    async def failing(*args, request_id: str, **kwargs):
        yield RequestOutput(request_id=request_id, delta="Hello", finished=False)
        raise RuntimeError("the engine failed")

    async def hung_up(response, event: dict) -> None:
        if "error" in event:  # the client is gone by the time the error event goes out
            raise ConnectionResetError
        await send(response, event)

    send = openai_api._send
    monkeypatch.setattr(server.state.engine, "stream", failing)
    monkeypatch.setattr(openai_api, "_send", hung_up)
    before = metric_values(server.url)
    with contextlib.suppress(aiohttp.ClientError):
        http("POST", server.url + "/v1/audio/transcriptions", form(clips[0]["bytes"], {"stream": "true"}))
    after = metric_values(server.url)
    moved = {status: after[("qasr_requests_total", (("status", status),))] -
             before[("qasr_requests_total", (("status", status),))] for status in ("server_error", "aborted")}
    assert moved == {"server_error": 1, "aborted": 0}


def test_an_oversized_max_completion_tokens_is_capped_to_what_the_audio_can_need(server, clips: list[dict],
                                                                                 http) -> None:
    from qasr.engine.request import output_token_cap

    engine = server.state.engine
    stream, requests = engine.stream, []

    def recording_stream(request):
        requests.append(request)
        return stream(request)

    engine.stream = recording_stream
    try:
        for value in ("9" * 5000, "4096", None):  # a number int() refuses to read, a large one, none at all
            fields = {"max_completion_tokens": value} if value else {}
            status, _, body = http("POST", server.url + "/v1/audio/transcriptions", form(clips[0]["bytes"], fields))
            assert status == 200, body
            assert b"trsc-" not in body  # the internal request id is only in the X-Request-Id header
        status, _, body = http("POST", server.url + "/v1/audio/transcriptions",
                               form(clips[0]["bytes"], {"max_completion_tokens": "3"}))
        assert status == 200
    finally:
        engine.stream = stream
    cap = output_token_cap(clips[0]["seconds"])
    assert cap < 512 and [r.sampling_params.max_tokens for r in requests] == [cap, cap, cap, 3]


def test_a_header_cut_short_by_max_completion_tokens_never_shows(server, clips: list[dict], http) -> None:
    for tokens in ("1", "2"):  # "language", "language English": the header the model starts with, cut short
        fields = {"max_completion_tokens": tokens}
        status, _, body = http("POST", server.url + "/v1/audio/transcriptions", form(clips[0]["bytes"], fields))
        assert status == 200 and json.loads(body)["text"] == ""
        status, _, body = http("POST", server.url + "/v1/audio/transcriptions",
                               form(clips[0]["bytes"], {**fields, "stream": "true"}))
        events = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e.startswith("data: {")]
        assert status == 200 and all(e["delta"] == "" for e in events[:-1]) and events[-1]["text"] == ""


def test_too_many_form_fields_is_413_saying_so(server, clips: list[dict], http) -> None:
    fields = {f"field{i}": "x" for i in range(1001)}
    error = assert_openai_error(http("POST", server.url + "/v1/audio/transcriptions", form(clips[0]["bytes"], fields)),
                                413, None, "too_many_fields")
    assert "form fields" in error["message"] and "MB" not in error["message"]


def test_a_client_hanging_up_mid_upload_is_no_server_error(server, clips: list[dict], metric_values,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import socket

    aborted = ("qasr_requests_total", (("status", "aborted"),))
    before = metric_values(server.url)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: qasr\r\n"
                           b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                           b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.opus"\r\n\r\n'
                           + clips[0]["bytes"][:4000])
        time.sleep(0.3)
    wait_for(lambda: metric_values(server.url)[aborted] == before[aborted] + 1)
    assert metric_values(server.url)[("qasr_requests_total", (("status", "server_error"),))] == \
        before[("qasr_requests_total", (("status", "server_error"),))]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
