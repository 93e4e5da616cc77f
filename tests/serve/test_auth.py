"""API keys: 401s in each API's own shape (through the official SDKs), tasks that only their key can see, fetch or
cancel, and signed result links that work without a key until they expire."""

import json
import time
from pathlib import Path

import dashscope
import openai
import pytest
from aiohttp import web
from dashscope.audio.qwen_asr import QwenTranscription

from qasr.engine import AsyncEngine, EngineConfig, TranscriptionRequest
from qasr.engine.audio import load_audio
from qasr.serve.app import create_app, reload_keys
from qasr.serve.auth import KeyRing, open_server_warning, result_link_query
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import CANCELED, PENDING, SUCCEEDED

KEY_A, KEY_B = "sk-qasr-alice-0123456789", "sk-qasr-bob-9876543210"


def test_a_key_ring_accepts_exactly_its_keys(tmp_path: Path) -> None:
    assert not KeyRing().enabled
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-12-01\n{KEY_B}  # bob\n\n")
    keys = KeyRing([KEY_A], str(key_file))
    assert keys.enabled and keys.accepts(KEY_A) and keys.accepts(KEY_B)
    for other in ("", KEY_A[:-1], KEY_A + "x", KEY_A.upper(), "# rotated 2026-12-01", "\udcff"):
        assert not keys.accepts(other)

    key_file.write_text("sk-new\n")
    reload_keys(keys)  # what SIGHUP runs
    assert keys.accepts("sk-new") and keys.accepts(KEY_A) and not keys.accepts(KEY_B)
    key_file.unlink()
    reload_keys(keys)  # an unreadable file keeps the keys as they were
    assert keys.accepts("sk-new")

    key_file.write_text("")
    empty = KeyRing(key_file=str(key_file))
    assert empty.enabled and not empty.accepts("")  # an emptied key file locks out instead of opening up
    key_file.write_text("sk-fine\nsk with a space\n")
    with pytest.raises(ValueError, match="line 2") as bad:
        KeyRing(key_file=str(key_file))
    assert "with a space" not in str(bad.value)  # a key is never echoed, not even a malformed one


@pytest.mark.parametrize(("host", "keys", "warns"), [
    ("127.0.0.1", [], False), ("::1", [], False), ("localhost", [], False), ("0.0.0.0", [], True),
    ("10.1.2.3", [], True), ("0.0.0.0", [KEY_A], False)])
def test_an_open_server_on_a_reachable_address_warns(host: str, keys: list[str], warns: bool) -> None:
    warning = open_server_warning(host, KeyRing(keys))
    assert (warning is not None) == warns
    if warns:
        assert "--api-key" in warning and host in warning


@pytest.fixture(scope="module")
def clip(heldout) -> dict:
    row = json.loads((heldout / "manifest.jsonl").read_text().splitlines()[0])
    row["path"] = heldout / row["file"]
    row["samples"] = load_audio(row["path"])
    return row


@pytest.fixture(scope="module")
def files(live_server, heldout):
    app = web.Application()

    async def audio(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(heldout / request.match_info["name"])

    app.router.add_get("/audio/{name}", audio)
    live = live_server(app)
    yield live
    live.close()


@pytest.fixture(scope="module")
def server(live_server, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("tasks") / "tasks.sqlite3"
    live = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=2)),
                                  ServerOptions(task_db=str(db), allow_private_urls=True, api_keys=[KEY_A, KEY_B])))
    yield live
    live.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def dashscope_error(response: tuple[int, dict, bytes], status: int, code: str) -> dict:
    got, _, body = response
    assert got == status, body
    error = json.loads(body)
    assert set(error) == {"request_id", "code", "message"} and error["code"] == code
    return error


def test_probes_and_scrapes_need_no_key(server, http) -> None:
    for path in ("/health", "/version", "/metrics"):
        assert http("GET", server.url + path)[0] == 200, path


def test_a_missing_or_wrong_key_is_a_401_in_each_apis_shape(server, clip: dict, http, metric_values) -> None:
    before = metric_values(server.url)
    for key in ("wrong-key", KEY_A[:-1]):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused, open(clip["path"], "rb") as audio:
            client.audio.transcriptions.create(file=audio, model="qasr-demo")
        assert refused.value.code == "invalid_api_key" and key not in str(refused.value)
    status, headers, body = http("GET", server.url + "/v1/models")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
    assert http("GET", server.url + "/v1/models", headers={"Authorization": "Basic " + KEY_A})[0] == 401

    dashscope.base_http_api_url = server.url + "/api/v1"
    submitted = QwenTranscription.async_call(model="qasr-demo", file_url="https://example.com/a.wav",
                                             api_key="wrong-key")
    assert submitted.status_code == 401 and submitted.code == "InvalidApiKey"
    assert "wrong-key" not in submitted.message
    dashscope_error(http("GET", server.url + "/api/v1/tasks/any"), 401, "InvalidApiKey")
    dashscope_error(http("GET", server.url + "/api/v1/tasks/any/result"), 401, "InvalidApiKey")

    after = metric_values(server.url)
    failures = {reason: after[("qasr_auth_failures_total", (("reason", reason),))] -
                before[("qasr_auth_failures_total", (("reason", reason),))] for reason in ("missing", "invalid")}
    assert failures == {"missing": 4, "invalid": 3}
    for key in ("wrong-key", KEY_A):
        assert key not in http("GET", server.url + "/metrics")[2].decode()


def test_the_right_key_transcribes(server, clip: dict) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY_B, max_retries=0)
    with open(clip["path"], "rb") as audio:
        text = client.audio.transcriptions.create(file=audio, model="qasr-demo", response_format="text")
    expected = server.call(server.state.engine.transcribe(TranscriptionRequest(clip["samples"]))).text
    assert text.strip() == expected


def test_a_task_exists_only_for_its_key(server, files, clip: dict, http) -> None:
    dashscope.base_http_api_url = server.url + "/api/v1"
    server.state.worker.claiming = False  # the tasks stay PENDING, so they can be canceled
    try:
        url = f"{files.url}/audio/{clip['file']}"
        mine = QwenTranscription.async_call(model="qasr-demo", file_url=url, api_key=KEY_A)
        assert mine.status_code == 200 and mine.output.task_status == PENDING
        task_id = mine.output.task_id
        for call in (QwenTranscription.fetch, QwenTranscription.cancel):
            theirs = call(task_id, api_key=KEY_B)
            assert theirs.status_code == 404 and theirs.code == "NotFound", theirs
        listed = QwenTranscription.list(api_key=KEY_B, page_size=100)
        assert listed.status_code == 200 and task_id not in [t["task_id"] for t in listed.output["data"]]
        listed = QwenTranscription.list(api_key=KEY_A, page_size=100)
        assert task_id in [t["task_id"] for t in listed.output["data"]]
        assert QwenTranscription.fetch(task_id, api_key=KEY_A).output.task_status == PENDING

        # an Idempotency-Key is the key holder's own: the same one from another key is another task
        submit = {"model": "qasr-demo", "input": {"file_url": url}}
        headers = {"X-DashScope-Async": "enable", "Content-Type": "application/json", "Idempotency-Key": "job-1"}
        ids = [json.loads(http("POST", server.url + "/api/v1/services/audio/asr/transcription", json.dumps(submit),
                               {**headers, **bearer(key)})[2])["output"]["task_id"] for key in (KEY_A, KEY_B, KEY_A)]
        assert ids[0] == ids[2] != ids[1]

        assert QwenTranscription.cancel(task_id, api_key=KEY_A).output["task_status"] == CANCELED
        for other in ids[:2]:
            assert QwenTranscription.cancel(other, api_key=KEY_B if other == ids[1] else KEY_A).status_code == 200
    finally:
        server.state.worker.claiming = True
    stored = server.call(server.state.tasks.run(server.state.tasks.get, task_id))
    assert stored.request.key_hash and KEY_A not in json.dumps(stored.request.key_hash)  # a keyed hash, not the key


def test_a_signed_result_link_works_without_a_key_until_it_expires(server, files, clip: dict, http) -> None:
    dashscope.base_http_api_url = server.url + "/api/v1"
    submitted = QwenTranscription.async_call(model="qasr-demo", file_url=f"{files.url}/audio/{clip['file']}",
                                             api_key=KEY_A)
    done = QwenTranscription.wait(submitted, api_key=KEY_A)
    assert done.output.task_status == SUCCEEDED, done
    link = done.output.result["transcription_url"]
    status, _, body = http("GET", link)  # no Authorization header, as DashScope's own links
    assert status == 200 and json.loads(body)["transcripts"][0]["text"]

    task_id = submitted.output.task_id
    plain = f"{server.url}/api/v1/tasks/{task_id}/result"
    dashscope_error(http("GET", plain), 401, "InvalidApiKey")
    dashscope_error(http("GET", plain, headers=bearer(KEY_B)), 404, "NotFound")
    assert http("GET", plain, headers=bearer(KEY_A))[0] == 200
    query = link.split("?")[1]
    expires, signature = (part.split("=")[1] for part in query.split("&"))
    secret = server.call(server.state.tasks.run(server.state.tasks.secret, "qasr"))
    altered = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    forged = {
        "altered signature": f"{plain}?expires={expires}&signature={altered}",
        "longer expiry": f"{plain}?expires={int(expires) + 1}&signature={signature}",
        "another file": f"{plain}/1?{query}",
        "no expiry": f"{plain}?signature={signature}",
        "not hex": f"{plain}?expires={expires}&signature=%C3%A9",
        "another task": f"{server.url}/api/v1/tasks/{'0' * 8}-0000-0000-0000-{'0' * 12}/result?{query}",
        "expired": f"{plain}?{result_link_query(secret, task_id, 0, time.time() - 1)}",
    }
    for what, url in forged.items():
        error = dashscope_error(http("GET", url), 403, "AccessDenied")
        assert ("expired" in error["message"]) == (what == "expired"), what
