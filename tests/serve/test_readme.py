"""The README's code that users copy: its DashScope snippet, run against a live server for a task that succeeds and
one that fails."""

import contextlib
import io
import json
import re
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from qasr.engine import AsyncEngine, EngineConfig
from qasr.serve.app import create_app
from qasr.serve.options import ServerOptions

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block_with(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [block] = [block for block in blocks if text in block]
    return block


@pytest.fixture(scope="module")
def servers(live_server, heldout):
    async def clip(request: web.Request) -> web.FileResponse:
        return web.FileResponse(heldout / request.match_info["name"])

    files = web.Application()
    files.router.add_get("/{name}", clip)
    file_server = live_server(files)
    server = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=4)),
                                    ServerOptions(task_db=":memory:", allow_private_urls=True)))
    yield server, file_server
    server.close()
    file_server.close()


@pytest.mark.parametrize(("file", "printed"), [
    ("test_seen-000000.opus",
     r"^http://127\.0\.0\.1:\d+/api/v1/tasks/[0-9a-f-]+/result\?expires=\d+&signature=[0-9a-f]{64}$"),
    ("missing.wav", r"^FAILED FILE_DOWNLOAD_FAILED Fetching .*HTTP 404"),
])
def test_the_dashscope_snippet_runs_for_a_task_that_succeeds_and_one_that_fails(servers, heldout, file: str,
                                                                                   printed: str) -> None:
    server, file_server = servers
    code = python_block_with("QwenTranscription").replace("http://127.0.0.1:8000", server.url)
    code = code.replace("https://example.com/call.wav", f"{file_server.url}/{file}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 -- the snippet as a user would run it
    assert re.match(printed, out.getvalue().strip()), out.getvalue()
    if file.endswith(".opus"):
        with urllib.request.urlopen(out.getvalue().strip()) as response:
            document = json.loads(response.read())
        assert document["transcripts"][0]["text"]
