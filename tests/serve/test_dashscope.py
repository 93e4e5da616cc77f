"""DashScope-style file transcription on loopback: the official dashscope SDK for the happy paths, plain aiohttp for
the rest; audio files come from a second local aiohttp server."""

import asyncio
import http.client as http_client
import io
import json
import math
import re
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import dashscope
import numpy as np
import pytest
import soundfile as sf
from aiohttp import web
from dashscope.audio.asr import Transcription
from dashscope.audio.qwen_asr import QwenTranscription
from yarl import URL

from qasr.engine import AsyncEngine, EngineConfig, TranscriptionRequest
from qasr.engine.audio import load_audio
from qasr.engine.llm_engine import LLMEngine
from qasr.serve.app import create_app
from qasr.serve.fetch import numeric_address, refusal
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import FAILED, PENDING, RUNNING, SUCCEEDED, Task, TaskRequest, TaskStore

TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}$")
MAX_FETCH_MB = 0.25


@pytest.fixture(scope="module")
def engine() -> AsyncEngine:
    # no forced aligner: one sentence per audio piece and enable_words a 400 (with one: test_words.py)
    return AsyncEngine(EngineConfig(max_num_seqs=8, aligner_model="none"))


@pytest.fixture(scope="module")
def clips(heldout) -> list[dict]:
    rows = [json.loads(line) for line in (heldout / "manifest.jsonl").read_text().splitlines()[:3]]
    for row in rows:
        row["samples"] = load_audio(heldout / row["file"])
    return rows


@pytest.fixture(scope="module")
def files(clips: list[dict], live_server, heldout):
    """Serves the clips under /audio/NAME, a two-channel WAV of clips 0 (left) and 1 (right), and bad files."""
    left, right = clips[0]["samples"], clips[1]["samples"]
    stereo = np.zeros((max(len(left), len(right)), 2), dtype=np.float32)
    stereo[:len(left), 0], stereo[:len(right), 1] = left, right
    wav = io.BytesIO()
    sf.write(wav, stereo, 16000, format="WAV", subtype="PCM_16")
    big = b"\0" * int(2 * MAX_FETCH_MB * (1 << 20))

    async def stream_big(request: web.Request) -> web.StreamResponse:  # chunked: no Content-Length to go by
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(big), 1 << 16):
            await response.write(big[start:start + (1 << 16)])
        return response

    def route(make_response):
        async def handler(request: web.Request) -> web.StreamResponse:
            return make_response(request)
        return handler

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/audio/{clips[0]['file']}")

    app = web.Application()
    app.router.add_get("/audio/{name}", route(lambda r: web.FileResponse(heldout / r.match_info["name"])))
    app.router.add_get("/stereo.wav", route(lambda r: web.Response(body=wav.getvalue(), content_type="audio/wav")))
    app.router.add_get("/garbage.wav", route(lambda r: web.Response(body=b"this is not audio, it is text")))
    app.router.add_get("/big.wav", route(lambda r: web.Response(body=big)))
    app.router.add_get("/big-chunked.wav", stream_big)
    app.router.add_get("/moved.opus", moved)
    live = live_server(app)
    stereo_samples = [load_audio(wav.getvalue(), channel=c) for c in (0, 1)]

    async def transcribe_stereo(engine: AsyncEngine) -> list[str]:
        return [(await engine.transcribe(TranscriptionRequest(s))).text for s in stereo_samples]

    live.transcribe_stereo = transcribe_stereo
    yield live
    live.close()


@pytest.fixture(scope="module")
def server(engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory, live_server):
    db = tmp_path_factory.mktemp("tasks") / "tasks.sqlite3"
    live = live_server(create_app(engine, ServerOptions(task_db=str(db), allow_private_urls=True,
                                                       max_fetch_mb=MAX_FETCH_MB, task_lease_s=1.5)))
    live.db = db
    yield live
    live.close()


@pytest.fixture(scope="module")
def expected(server, engine: AsyncEngine, clips: list[dict]) -> list[str]:
    """What the engine itself transcribes for each clip: the tasks must give the same."""
    async def transcribe_all() -> list[str]:
        results = await asyncio.gather(*(engine.transcribe(TranscriptionRequest(c["samples"])) for c in clips))
        return [r.text for r in results]

    return server.call(transcribe_all())


@pytest.fixture
def own_server(live_server):
    """`own_server(db, **options)`: a server with its own small engine, for tests that stop it (stopping an app
    shuts its engine down)."""

    def start(db: Path, **options):
        return live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=4)),
                                      ServerOptions(task_db=str(db), allow_private_urls=True, **options)))

    return start


def assert_dashscope_error(response: tuple[int, dict, bytes], status: int, code: str | None = None) -> dict:
    got, headers, body = response
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"request_id", "code", "message"} and error["message"] and error["request_id"]
    if code is not None:
        assert error["code"] == code
    return error


def test_qwen_filetrans_through_the_sdk(server, files, clips: list[dict],
                                        expected: list[str], get_json, http) -> None:
    dashscope.base_http_api_url = server.url + "/api/v1"
    submitted = QwenTranscription.async_call(model="qasr-demo", file_url=f"{files.url}/audio/{clips[0]['file']}",
                                             api_key="unused", channel_id=[0], enable_itn=False, enable_words=False,
                                             language="en")
    assert submitted.status_code == 200 and submitted.output.task_status == PENDING
    done = QwenTranscription.wait(submitted, api_key="unused")
    assert done.status_code == 200 and done.output.task_status == SUCCEEDED, done
    output = done.output
    for key in ("submit_time", "scheduled_time", "end_time"):
        assert TIME.match(output[key]), output
    assert done.usage["seconds"] == math.ceil(clips[0]["seconds"])
    fetched = QwenTranscription.fetch(submitted.output.task_id, api_key="unused")
    assert fetched.output.result == output.result
    task_url = f"{server.url}/api/v1/tasks/{submitted.output.task_id}"
    assert_dashscope_error(http("GET", f"{task_url}/result/1"), 404, "NotFound")
    assert_dashscope_error(http("GET", f"{task_url}/result/{'9' * 5000}"), 404, "NotFound")  # past int()'s limit

    document = get_json(output.result["transcription_url"])
    assert document["file_url"] == f"{files.url}/audio/{clips[0]['file']}"
    assert document["audio_info"] == {"format": "ogg", "sample_rate": 48000}
    assert document["properties"]["original_duration_in_milliseconds"] == pytest.approx(clips[0]["seconds"] * 1000,
                                                                                        abs=10)
    [transcript] = document["transcripts"]
    assert transcript["channel_id"] == 0 and transcript["text"] == expected[0]
    [sentence] = transcript["sentences"]
    assert sentence["sentence_id"] == 0 and sentence["begin_time"] == 0 and sentence["text"] == expected[0]
    assert sentence["end_time"] == pytest.approx(clips[0]["seconds"] * 1000, abs=10) and sentence["language"] == "en"


def test_paraformer_file_urls_through_the_sdk(server, files, clips: list[dict],
                                              expected: list[str], get_json) -> None:
    dashscope.base_http_api_url = server.url + "/api/v1"
    urls = [f"{files.url}/audio/{clips[1]['file']}", f"{files.url}/missing.wav", f"{files.url}/moved.opus"]
    submitted = Transcription.async_call(model="qasr-demo", file_urls=urls, api_key="unused", language_hints=["en"])
    done = Transcription.wait(submitted, api_key="unused")
    output = done.output
    assert output.task_status == SUCCEEDED
    assert output["task_metrics"] == {"TOTAL": 3, "SUCCEEDED": 2, "FAILED": 1}
    first, missing, moved = output["results"]
    assert [r["file_url"] for r in output["results"]] == urls
    assert missing["subtask_status"] == FAILED and missing["code"] == "FILE_DOWNLOAD_FAILED"
    assert "404" in missing["message"] and "transcription_url" not in missing
    assert get_json(first["transcription_url"])["transcripts"][0]["text"] == expected[1]
    assert get_json(moved["transcription_url"])["transcripts"][0]["text"] == expected[0]  # redirect followed
    assert done.usage["duration"] == math.ceil(clips[1]["seconds"] + clips[0]["seconds"])


def test_each_requested_channel_is_transcribed_on_its_own(server, files,
                                                          engine: AsyncEngine, submit, wait_done, get_json) -> None:
    task_id = submit(server, f"{files.url}/stereo.wav", channel_id=[1, 0])
    output = wait_done(server, task_id)["output"]
    assert output["task_status"] == SUCCEEDED, output
    document = get_json(output["result"]["transcription_url"])
    left, right = server.call(files.transcribe_stereo(engine))
    assert [(t["channel_id"], t["text"]) for t in document["transcripts"]] == [(1, right), (0, left)]
    assert document["properties"]["channels"] == [0, 1] and document["audio_info"]["format"] == "wav"

    task_id = submit(server, f"{files.url}/stereo.wav", channel_id=[2])
    output = wait_done(server, task_id)["output"]
    assert output["task_status"] == FAILED and output["code"] == "FILE_DECODE_FAILED"
    assert "channel 2 is out of range" in output["message"]


@pytest.mark.parametrize(("path", "code", "words"), [
    ("/garbage.wav", "FILE_DECODE_FAILED", "Could not read the audio"),
    ("/big.wav", "FILE_TOO_LARGE", "--max-fetch-mb"),
    ("/big-chunked.wav", "FILE_TOO_LARGE", "--max-fetch-mb"),
    ("/missing.wav", "FILE_DOWNLOAD_FAILED", "HTTP 404"),
])
def test_bad_files_fail_the_task_with_a_message(server, files, path: str, code: str,
                                                words: str, submit, wait_done) -> None:
    answer = wait_done(server, submit(server, files.url + path))
    output = answer["output"]
    assert output["task_status"] == FAILED and output["code"] == code and words in output["message"], output
    assert "result" not in output and "usage" not in answer and TIME.match(output["end_time"])


def test_bad_requests_get_dashscope_errors(server, files, clips: list[dict], http, dashscope_submit) -> None:
    submit_path, async_headers = dashscope_submit
    url, file_url = server.url + submit_path, f"{files.url}/audio/{clips[0]['file']}"

    def post(body: object, headers: dict = async_headers) -> tuple[int, dict, bytes]:
        return http("POST", url, body if isinstance(body, str) else json.dumps(body), headers)

    good = {"model": "qasr-demo", "input": {"file_url": file_url}}
    error = assert_dashscope_error(post(good, {"Content-Type": "application/json"}), 400, "InvalidParameter")
    assert "X-DashScope-Async" in error["message"]
    assert_dashscope_error(post("{not json"), 400, "InvalidParameter")
    assert_dashscope_error(post([good]), 400, "InvalidParameter")
    assert_dashscope_error(post({"input": {"file_url": file_url}}), 400, "BadRequest.EmptyModel")
    assert "whisper" in assert_dashscope_error(post({**good, "model": "whisper"}), 404, "ModelNotFound")["message"]
    assert_dashscope_error(post({"model": "qasr-demo"}), 400, "BadRequest.EmptyInput")
    assert_dashscope_error(post({"model": "qasr-demo", "input": {"file_url": "ftp://x/a.wav"}}), 400, "InvalidURL")
    assert_dashscope_error(post({"model": "qasr-demo", "input": {"file_url": "http://example.com\\@127.0.0.1/a"}}),
                           400, "InvalidURL")  # a backslash in the authority: parsers disagree on the host
    assert_dashscope_error(post({"model": "qasr-demo", "input": {"file_urls": "http://x/a.wav"}}), 400)
    assert_dashscope_error(post({"model": "qasr-demo", "input": {"file_url": file_url, "file_urls": [file_url]}}),
                           400)
    for parameters in ({"channel_id": 0}, {"channel_id": [0, 0]}, {"channel_id": [-1]}, {"channel_id": [[0]]},
                       {"channel_id": [{}]}, {"language": "klingon"}, {"enable_words": "yes"}, []):
        assert_dashscope_error(post({**good, "parameters": parameters}), 400, "InvalidParameter")
    error = assert_dashscope_error(post({**good, "parameters": {"enable_words": True}}), 400, "InvalidParameter")
    assert "--aligner-model" in error["message"]  # this server has no forced aligner
    assert_dashscope_error(post("[" * 100000 + "]" * 100000), 400, "InvalidParameter")  # deeper than json parses

    assert_dashscope_error(http("GET", server.url + "/api/v1/tasks/no-such-task"), 404, "NotFound")
    assert_dashscope_error(http("GET", server.url + "/api/v1/tasks/no-such-task/result"), 404, "NotFound")
    assert_dashscope_error(http("POST", server.url + "/api/v1/tasks/no-such-task/cancel"), 404, "NotFound")
    assert_dashscope_error(http("GET", url), 405)
    error = assert_dashscope_error(http("GET", server.url + "/api/v1/tasks"), 403, "AccessDenied")  # every client's
    assert "--enable-task-listing" in error["message"]
    assert "error" in json.loads(http("GET", server.url + "/v1/nothing")[2])  # OpenAI's shape stays off /api/v1


def test_result_url_follows_the_load_balancer(server, files, clips: list[dict], http, submit, query, wait_done,
                                              get_json) -> None:
    task_id = submit(server, f"{files.url}/audio/{clips[2]['file']}")
    wait_done(server, task_id)
    own, signature = query(server, task_id)["output"]["result"]["transcription_url"].split("?")
    assert own == f"{server.url}/api/v1/tasks/{task_id}/result"
    assert re.fullmatch(r"expires=\d+&signature=[0-9a-f]{64}", signature)
    assert get_json(own + "/0") == get_json(own) == get_json(f"{own}?{signature}")
    for index in ("%C2%B2", "1", "99999999999999999999999"):  # "²".isdigit(), but not int("²")
        assert_dashscope_error(http("GET", f"{own}/{index}"), 404, "NotFound")
    proxied = query(server, task_id, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "asr.example.com, lb",
                                      "X-Forwarded-Prefix": "/qasr"})["output"]["result"]["transcription_url"]
    assert proxied.split("?")[0] == f"https://asr.example.com/qasr/api/v1/tasks/{task_id}/result"


def test_private_addresses_are_refused_unless_allowed(files, clips: list[dict], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, live_server, submit,
                                                      wait_done) -> None:
    strict = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=2)),
                                   ServerOptions(task_db=str(tmp_path / "tasks.sqlite3"))))
    # a "public" server for the first hop of a redirect: 127.0.0.2, which only this test lets through
    allowed, public = refusal, web.AppRunner(web.Application())
    monkeypatch.setattr("qasr.serve.fetch.refusal",
                        lambda address: None if address == "127.0.0.2" else allowed(address))

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    public.app.router.add_get("/redirect", redirect)
    files.call(public.setup())
    files.call(web.TCPSite(public, "127.0.0.2", 0).start())
    try:
        port, path = files.url.rsplit(":", 1)[1], f"/audio/{clips[0]['file']}"
        # aiohttp (yarl) reads the Unicode spellings as 127.0.0.1, the C library the numeric ones
        hosts = ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "１２７.０.０.１", "127。0。0。1",
                 "①②⑦.0.0.1", "2130706433", "0x7f.1", "017700000001", "127.1", "evil@127.0.0.1", "ｌｏｃａｌｈｏｓｔ")
        urls = [f"http://{host}:{port}{path}" for host in hosts]
        redirected = f"http://127.0.0.2:{public.addresses[0][1]}/redirect?to=http://%EF%BC%91%EF%BC%92%EF%BC%97." \
                     f"%EF%BC%90.%EF%BC%90.%EF%BC%91:{port}{path}"  # to http://１２７.０.０.１:port/...
        for url in [*urls, redirected]:
            output = wait_done(strict, submit(strict, url))["output"]
            assert output["task_status"] == FAILED and output["code"] == "FILE_DOWNLOAD_FAILED", (url, output)
            assert "loopback" in output["message"] and "--allow-private-urls" in output["message"], (url, output)
    finally:
        strict.close()
        files.call(public.cleanup())
    assert allowed("8.8.8.8") is None and allowed("2606:4700:4700::1111") is None
    for address, kind in (("10.1.2.3", "private"), ("169.254.169.254", "link-local"), ("::1", "loopback"),
                          ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("fd00::1", "private"),
                          ("100.64.0.1", "not a public")):
        assert kind in str(allowed(address)), address
    assert URL("http://１６９.２５４.１６９.２５４/latest/meta-data/").raw_host == "169.254.169.254"
    assert numeric_address("0xa9.0xfe.0xa9.0xfe") == "169.254.169.254"


def test_allowed_url_hosts_pass_and_no_other_private_address(files, clips: list[dict], tmp_path: Path, live_server,
                                                              submit, wait_done, expected: list[str],
                                                              get_json) -> None:
    """--allow-url-host lets the named hosts through, in any spelling, on every hop; a redirect from one of them
    to a private address it does not name is refused."""
    allowing = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=2)), ServerOptions(
        task_db=str(tmp_path / "tasks.sqlite3"), allow_url_hosts=["LOCALHOST.", "127.0.0.3"])))
    hop = web.AppRunner(web.Application())

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    hop.app.router.add_get("/redirect", redirect)
    files.call(hop.setup())
    files.call(web.TCPSite(hop, "127.0.0.3", 0).start())
    try:
        port, path = files.url.rsplit(":", 1)[1], f"/audio/{clips[0]['file']}"
        via = f"http://0x7f.0.0.3:{hop.addresses[0][1]}/redirect?to="  # 127.0.0.3 spelled as the C library reads it
        passing = [f"http://localhost:{port}{path}", f"{via}http://localhost:{port}{path}"]
        refused = [f"http://127.0.0.1:{port}{path}", f"{via}http://127.0.0.1:{port}{path}",
                   f"{via}http://[::1]:{port}{path}"]
        for url in passing:
            output = wait_done(allowing, submit(allowing, url))["output"]
            assert output["task_status"] == SUCCEEDED, (url, output)
            assert get_json(output["result"]["transcription_url"])["transcripts"][0]["text"] == expected[0]
        for url in refused:
            output = wait_done(allowing, submit(allowing, url))["output"]
            assert output["task_status"] == FAILED and output["code"] == "FILE_DOWNLOAD_FAILED", (url, output)
            assert "loopback" in output["message"] and "--allow-url-host" in output["message"], (url, output)
    finally:
        allowing.close()
        files.call(hop.cleanup())


def test_cancel_and_list_while_the_worker_is_held(files, clips: list[dict], tmp_path: Path, http, metric_values, submit,
                                                  query, get_json, own_server) -> None:
    held = own_server(tmp_path / "tasks.sqlite3", max_running_tasks=0, enable_task_listing=True)
    try:
        kept, canceled = (submit(held, f"{files.url}/audio/{clips[0]['file']}") for _ in range(2))
        time.sleep(0.2)
        assert query(held, kept)["output"]["task_status"] == PENDING
        status, _, answer = http("POST", f"{held.url}/api/v1/tasks/{canceled}/cancel")
        assert status == 200 and json.loads(answer)["output"]["task_status"] == "CANCELED"
        assert_dashscope_error(http("POST", f"{held.url}/api/v1/tasks/{canceled}/cancel"), 400,
                               "UnsupportedOperation")
        output = query(held, canceled)["output"]
        assert output["task_status"] == "CANCELED" and TIME.match(output["end_time"])

        page = get_json(f"{held.url}/api/v1/tasks?page_size=1")
        assert page["total"] == 2 and page["total_page"] == 2 and [t["task_id"] for t in page["data"]] == [canceled]
        assert [t["task_id"] for t in get_json(f"{held.url}/api/v1/tasks?status=PENDING")["data"]] == [kept]
        for bad in ("status=DONE", "page_no=%C2%B2", "page_size=%D9%A3", "page_no=100000000000000000000",
                    "page_size=" + "9" * 5000):
            assert_dashscope_error(http("GET", f"{held.url}/api/v1/tasks?{bad}"), 400, "InvalidParameter")

        metrics = metric_values(held.url)
        assert metrics[("qasr_async_tasks", (("status", "pending"),))] == 1
        assert metrics[("qasr_async_tasks", (("status", "canceled"),))] == 1
        assert metrics[("qasr_async_tasks_finished_total", (("status", "canceled"),))] == 1
    finally:
        held.close()


def test_tasks_survive_a_restart(files, clips: list[dict], expected: list[str], tmp_path: Path, submit, query,
                                 wait_done, get_json, own_server) -> None:
    db = tmp_path / "tasks.sqlite3"
    first = own_server(db, max_running_tasks=0)
    try:
        task_id = submit(first, f"{files.url}/audio/{clips[1]['file']}")
    finally:
        first.close()
    second = own_server(db)
    try:
        output = wait_done(second, task_id)["output"]
        assert output["task_status"] == SUCCEEDED
        assert get_json(output["result"]["transcription_url"])["transcripts"][0]["text"] == expected[1]
    finally:
        second.close()
    third = own_server(db, max_running_tasks=0)  # finished results are served after a restart too
    try:
        result = query(third, task_id)["output"]["result"]["transcription_url"]
        assert get_json(result)["transcripts"][0]["text"] == expected[1]
    finally:
        third.close()


def test_a_dead_replicas_task_runs_again(server, files, clips: list[dict],
                                         expected: list[str], wait_done, get_json, metric_values) -> None:
    """A task another process claimed and stopped renewing (it died) goes back to PENDING and runs here."""
    other = TaskStore(server.db)
    expiries = metric_values(server.url)[("qasr_async_task_lease_expiries_total", ())]
    try:
        task = Task(task_id="from-a-dead-replica", submit_time=time.time() - 100,
                    request=TaskRequest(model="qasr-demo", file_urls=[f"{files.url}/audio/{clips[2]['file']}"],
                                        multi_file=False))
        other.add(task)
        [claimed] = other.claim("dead-replica", 1, lease_seconds=0.5)
        assert claimed.task_id == task.task_id and claimed.status == RUNNING
        output = wait_done(server, task.task_id)["output"]
        assert output["task_status"] == SUCCEEDED
        assert get_json(output["result"]["transcription_url"])["transcripts"][0]["text"] == expected[2]
        finished = other.get(task.task_id)
        assert finished.owner != "dead-replica" and finished.attempts == 2
        assert metric_values(server.url)[("qasr_async_task_lease_expiries_total", ())] == expiries + 1
    finally:
        other.close()


def test_a_task_that_keeps_killing_its_server_fails(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.sqlite3", max_attempts=2)
    store.add(Task(task_id="poison", request=TaskRequest(model="m", file_urls=["http://x/a.wav"], multi_file=False)))
    for attempt in range(2):
        assert [t.task_id for t in store.claim(f"replica-{attempt}", 5, lease_seconds=-1)] == ["poison"]
        failed, _ = store.requeue_expired()
    [task] = failed
    assert task.status == FAILED and "interrupted 2 times" in task.message
    assert store.claim("replica-3", 5, 10) == []


def test_claims_from_many_connections_never_overlap(tmp_path: Path) -> None:
    db = tmp_path / "tasks.sqlite3"
    setup = TaskStore(db)
    ids = [f"task-{i}" for i in range(120)]
    for task_id in ids:
        setup.add(Task(task_id=task_id, request=TaskRequest(model="m", file_urls=["http://x/a"], multi_file=False)))
    claimed: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def worker(i: int) -> None:
        store = TaskStore(db)
        start.wait()
        while batch := store.claim(f"worker-{i}", 3, 60):
            claimed[i] += [task.task_id for task in batch]
            for task in batch:
                task.status = SUCCEEDED
                assert store.finish(task)
                assert not store.finish(task)  # finished once only
        store.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [task_id for batch in claimed for task_id in batch]
    assert sorted(everything) == sorted(ids)  # every task claimed, none twice
    assert setup.counts()[SUCCEEDED] == len(ids)
    setup.close()


def test_two_servers_on_one_database_run_each_task_once(files, clips: list[dict], expected: list[str], tmp_path: Path,
                                                        live_server, metric_values, wait_done, get_json,
                                                        replica_apps) -> None:
    db = tmp_path / "tasks.sqlite3"
    store = TaskStore(db)
    ids = [f"shared-{i}" for i in range(8)]
    for i, task_id in enumerate(ids):
        url = f"{files.url}/audio/{clips[i % 3]['file']}"
        store.add(Task(task_id=task_id, request=TaskRequest(model="qasr-demo", file_urls=[url], multi_file=False)))
    calls: list[int] = []
    apps = replica_apps(str(db), calls)
    servers = [live_server(app) for app in apps]  # both claim at once, before either can finish a task
    try:
        for i, task_id in enumerate(ids):
            output = wait_done(servers[i % 2], task_id)["output"]
            assert output["task_status"] == SUCCEEDED
            assert get_json(output["result"]["transcription_url"])["transcripts"][0]["text"] == expected[i % 3]
        owners = {store.get(task_id).owner for task_id in ids}
        assert owners == {live.state.worker.owner for live in servers}
        assert len(calls) == len(ids)
        finished = sum(metric_values(live.url)[("qasr_async_tasks_finished_total", (("status", "succeeded"),))]
                       for live in servers)
        assert finished == len(ids)
    finally:
        for live in servers:
            live.close()
        store.close()


def test_the_store_is_plain_sqlite(server, metric_values) -> None:
    with sqlite3.connect(server.db) as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
    assert statuses.get(SUCCEEDED, 0) > 0
    metrics = metric_values(server.url)
    assert metrics[("qasr_async_tasks", (("status", "succeeded"),))] == statuses[SUCCEEDED]
    assert metrics[("qasr_async_task_latency_seconds_count", ())] >= 1


def test_a_claim_interrupted_by_shutdown_is_handed_back(tmp_path: Path, own_server) -> None:
    """The worker's claim waits on another process's write lock when the server stops: the claim still commits on
    its thread, and the task must go back to PENDING, not stay RUNNING under a stopped owner."""
    db = tmp_path / "tasks.sqlite3"
    live = own_server(db)
    owner = live.state.worker.owner
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        time.sleep(0.5)  # the worker's first rounds are done
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO tasks (task_id, status, request, submit_time) VALUES (?, ?, ?, ?)",
                      ("t-1", PENDING, json.dumps({"model": "qasr-demo", "file_urls": ["http://x.invalid/a.wav"],
                                                   "multi_file": False}), time.time()))
        time.sleep(1.5)  # the next claim now waits on the busy lock
        threading.Timer(1.0, other.execute, ("COMMIT",)).start()
        live.close()
    finally:
        other.close()
    store = TaskStore(db)
    task = store.get("t-1")
    store.close()
    assert (task.status, task.owner, task.attempts) == (PENDING, None, 0), (task, owner)


def test_a_task_whose_lease_was_lost_is_abandoned(files, clips: list[dict], tmp_path: Path, submit, query,
                                                  own_server) -> None:
    live = own_server(tmp_path / "tasks.sqlite3", task_lease_s=0.6)
    started, cancelled = threading.Event(), threading.Event()

    async def stuck(*args, **kwargs):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    live.state.engine.transcribe = stuck
    try:
        task_id = submit(live, f"{files.url}/audio/{clips[0]['file']}")
        assert started.wait(20)
        with sqlite3.connect(tmp_path / "tasks.sqlite3") as other:  # as if it was requeued and another replica took it
            other.execute("UPDATE tasks SET owner = 'another-replica', lease_until = lease_until + 3600 "
                          "WHERE task_id = ?", (task_id,))
        assert cancelled.wait(10), "the task kept running after its lease was lost"
        deadline = time.monotonic() + 10
        while live.state.worker.running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        output = query(live, task_id)["output"]
        assert output["task_status"] == RUNNING  # left to its new owner, not finished here
    finally:
        live.close()


def test_task_work_moves_the_request_metrics(server, files, clips: list[dict], metric_values, submit,
                                             wait_done) -> None:
    before = metric_values(server.url)
    wait_done(server, submit(server, f"{files.url}/audio/{clips[1]['file']}"))
    after = metric_values(server.url)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("qasr_audio_input_seconds_total") == pytest.approx(clips[1]["seconds"], abs=0.01)  # once
    assert moved("qasr_generation_tokens_total") > 0 and moved("qasr_prompt_tokens_total") > 0
    for histogram in ("qasr_request_audio_duration_seconds", "qasr_time_to_first_token_seconds",
                      "qasr_request_queue_time_seconds", "qasr_request_real_time_factor"):
        assert moved(histogram + "_count") == 1, histogram
    # not an OpenAI request: those counts stay as they were
    assert moved("qasr_requests_total", status="success") == 0 and moved("qasr_e2e_request_latency_seconds_count") == 0


def test_audio_that_kills_the_engine_fails_on_its_third_attempt_instead_of_killing_every_replica(
        files, clips: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_server, submit, query) -> None:
    class Fatal(BaseException):
        """A fault the engine thread does not survive (a failed step that raises an Exception only fails the
        requests in flight, and their tasks fail at once)."""

    def crash(self: LLMEngine) -> list:
        raise Fatal("the engine thread dies")  # as audio that trips a fatal bug in the engine would

    monkeypatch.setattr(LLMEngine, "step", crash)
    db, task_id = tmp_path / "tasks.sqlite3", None
    for attempt in (1, 2, 3):  # a replica, restarted or another, takes the task again
        server = own_server(db)
        try:
            task_id = task_id or submit(server, f"{files.url}/audio/{clips[0]['file']}")
            deadline = time.monotonic() + 30
            while server.state.engine.is_running or query(server, task_id)["output"]["task_status"] == RUNNING:
                assert time.monotonic() < deadline, "the engine did not crash, or the task stayed RUNNING"
                time.sleep(0.05)
            assert server.state.engine.crashed
            output = query(server, task_id)["output"]
        finally:
            server.close()
        if attempt < 3:
            assert output["task_status"] == PENDING, output
        else:
            assert output["task_status"] == FAILED and output["code"] == "InternalError", output
            assert "stopped 3 times" in output["message"]
    assert sqlite3.connect(db).execute("SELECT attempts FROM tasks WHERE task_id = ?", (task_id,)).fetchone() == (3,)


def test_a_retried_submit_with_an_idempotency_key_finds_the_first_task(server, files, clips: list[dict], http,
                                                                       dashscope_submit, wait_done) -> None:
    submit_path, async_headers = dashscope_submit
    url = server.url + submit_path

    def post(file: str, key: str | None) -> tuple[int, dict]:
        body = json.dumps({"model": "qasr-demo", "input": {"file_url": f"{files.url}/audio/{file}"}})
        headers = {**async_headers, **({"Idempotency-Key": key} if key else {})}
        status, _, answer = http("POST", url, body, headers)
        return status, json.loads(answer)

    status, first = post(clips[0]["file"], "retry-me")
    assert status == 200
    status, again = post(clips[0]["file"], "retry-me")  # the client never heard the first answer: it retries
    assert status == 200 and again["output"]["task_id"] == first["output"]["task_id"]
    task_id = first["output"]["task_id"]
    assert wait_done(server, task_id)["output"]["task_status"] == SUCCEEDED
    status, late = post(clips[0]["file"], "retry-me")  # a retry after the task finished still finds it
    assert late["output"] == {"task_id": task_id, "task_status": SUCCEEDED}
    status, conflict = post(clips[1]["file"], "retry-me")  # the same key for another request
    assert status == 409 and conflict["code"] == "IdempotencyKeyReused"
    assert post(clips[0]["file"], "k" * 256)[0] == 400
    # a key whose bytes are not UTF-8 is the client's mistake, not a 500
    connection = http_client.HTTPConnection(*urlsplit(server.url).netloc.split(":"), timeout=30)
    connection.putrequest("POST", submit_path)
    for name, value in {**async_headers, "Content-Type": "application/json", "Idempotency-Key": b"ab\xffcd"}.items():
        connection.putheader(name, value)
    body = json.dumps({"model": "qasr-demo", "input": {"file_url": f"{files.url}/audio/{clips[0]['file']}"}})
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body.encode())
    answer = connection.getresponse()
    assert answer.status == 400 and json.loads(answer.read())["code"] == "InvalidParameter"
    connection.close()
    assert post(clips[0]["file"], None)[1]["output"]["task_id"] != post(clips[0]["file"], None)[1]["output"]["task_id"]
    assert sqlite3.connect(server.db).execute("SELECT COUNT(*) FROM tasks WHERE task_id = ?",
                                              (task_id,)).fetchone()[0] == 1


def test_a_task_file_that_fails_unexpectedly_cancels_its_siblings() -> None:
    """The task is failed at once; its other files' downloads and engine requests must not run on unseen."""
    from qasr.serve.task_worker import gather_or_cancel

    cancelled: list[str] = []

    async def sibling(name: str) -> str:
        try:
            await asyncio.sleep(30)
            return name
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def broken() -> str:
        await asyncio.sleep(0.01)
        raise KeyError("a bug")

    async def run() -> None:
        assert await gather_or_cancel(asyncio.sleep(0, "a"), asyncio.sleep(0, "b")) == ["a", "b"]
        with pytest.raises(KeyError):
            await gather_or_cancel(sibling("first"), broken(), sibling("third"))

    asyncio.run(asyncio.wait_for(run(), 10))
    assert sorted(cancelled) == ["first", "third"]
