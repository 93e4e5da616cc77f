"""Fixtures for the server tests: apps served on loopback (`live_server`) or `qasr serve` in a process
(`serve_process`), plain HTTP calls (`http`), /metrics (`metric_values`), the held-out clips (`heldout`), a throwaway
PostgreSQL server (`postgres`) and the DashScope task helpers (`submit`, `query`, `wait_done`, `get_json`,
`replica_apps`, `dashscope_submit`)."""

import asyncio
import faulthandler
import json
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from qasr.benchmarks.heldout import HELDOUT
from qasr.benchmarks.processes import ServerProcess, ThrowawayPostgres
from qasr.engine import AsyncEngine, EngineConfig
from qasr.serve.app import create_app, start
from qasr.serve.options import ServerOptions
from qasr.serve.state import STATE
from qasr.serve.task_store import PENDING, RUNNING

SUBMIT = "/api/v1/services/audio/asr/transcription"
ASYNC = {"X-DashScope-Async": "enable", "Content-Type": "application/json"}


class LiveServer:
    """An app served on a free loopback port by an event loop on its own thread, so tests can block."""

    def __init__(self, app: aiohttp.web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # a qasr app is served as `qasr serve` serves it; a test's helper app (a file server) plainly
        self.runner = self.call(start(app, "127.0.0.1", 0) if STATE in app else self.plain(app))
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    @staticmethod
    async def _describe_tasks() -> str:
        current = asyncio.current_task()
        return "\n".join(f"{task!r}\n" + "".join(f"    {frame}\n" for frame in task.get_stack())
                         for task in asyncio.all_tasks() if task is not current)

    @staticmethod
    async def plain(app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    @property
    def state(self):
        return self.app[STATE]

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", **options)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused")

    def close(self) -> None:
        try:
            self.call(self.runner.cleanup(), timeout=120)
        except TimeoutError:  # say what is stuck: a shutdown waits for requests in progress, for up to 60 s
            tasks = self.call(self._describe_tasks())
            faulthandler.dump_traceback(file=sys.stderr)
            raise TimeoutError(f"the app did not shut down; its loop's tasks:\n{tasks}") from None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def http(method: str, url: str, data: Any = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    async def go() -> tuple[int, dict, bytes]:
        async with aiohttp.ClientSession() as session:
            body = data() if callable(data) else data
            async with session.request(method, url, data=body, headers=headers) as response:
                return response.status, dict(response.headers), await response.read()

    return asyncio.run(go())


def metric_values(url: str) -> dict[tuple[str, tuple], float]:
    text = http("GET", url + "/metrics")[2].decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def submit(server: LiveServer, file_url: str | list[str], model: str = "qasr-demo", **parameters) -> str:
    key = "file_urls" if isinstance(file_url, list) else "file_url"
    body = {"model": model, "input": {key: file_url}, "parameters": parameters}
    status, _, answer = http("POST", server.url + SUBMIT, json.dumps(body), ASYNC)
    assert status == 200, answer
    output = json.loads(answer)["output"]
    assert output["task_status"] == PENDING
    return output["task_id"]


def query(server: LiveServer, task_id: str, headers: dict | None = None) -> dict:
    status, _, answer = http("GET", f"{server.url}/api/v1/tasks/{task_id}", headers=headers)
    assert status == 200, answer
    return json.loads(answer)


def wait_done(server: LiveServer, task_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (answer := query(server, task_id))["output"]["task_status"] in (PENDING, RUNNING):
        assert time.monotonic() < deadline, f"task {task_id} still {answer['output']['task_status']}"
        time.sleep(0.05)
    return answer


def get_json(url: str) -> dict:
    status, _, answer = http("GET", url)
    assert status == 200, answer
    return json.loads(answer)


def replica_apps(task_db: str, calls: list[int], count: int = 2) -> list[web.Application]:
    """Apps with their own small engines sharing one task store; every engine request appends to `calls`, so a
    task run twice shows as one call too many."""
    apps = [create_app(AsyncEngine(EngineConfig(max_num_seqs=4)),
                       ServerOptions(task_db=task_db, allow_private_urls=True, max_running_tasks=2))
            for _ in range(count)]
    for app in apps:
        engine = app[STATE].engine
        original = engine.transcribe

        async def counting(samples, *args, _original=original, **kwargs):
            calls.append(1)
            return await _original(samples, *args, **kwargs)

        engine.transcribe = counting
    return apps


@pytest.fixture(scope="session")
def heldout() -> Path:
    """The committed held-out clips: manifest.jsonl and the audio files it names."""
    return HELDOUT


@pytest.fixture(scope="session")
def live_server():
    """The class `LiveServer(app)`: serves `app` on loopback until `.close()`; `.url`, `.state`, `.call(coro)`,
    `.client()` and `.async_client()` (openai SDK clients)."""
    return LiveServer


@pytest.fixture(scope="session")
def serve_process():
    """The class `ServerProcess(*flags, log_path=..., open_files=None)`: `qasr serve` in its own process; `.url`,
    `.log()`, `.peak_rss_mb()`, `.stop()` (SIGINT, returns the exit code)."""
    return ServerProcess


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for the module: `.new_database()` -> a URL, `.admin` (a psycopg connection),
    `.pause()` and `.start()`."""
    server = ThrowawayPostgres()
    yield server
    server.stop()


@pytest.fixture(name="http", scope="session")
def fixture_http():
    """`http(method, url, data=None, headers=None)` -> (status, headers, body); `data` may be a callable."""
    return http


@pytest.fixture(name="metric_values", scope="session")
def fixture_metric_values():
    """`metric_values(url)`: the server's /metrics as {(name, sorted label items): value}."""
    return metric_values


@pytest.fixture(scope="session")
def dashscope_submit() -> tuple[str, dict[str, str]]:
    """The DashScope submit path and the headers of an asynchronous call, which `submit` sends."""
    return SUBMIT, ASYNC


@pytest.fixture(name="submit", scope="session")
def fixture_submit():
    """`submit(server, file_url or [file_urls], model="qasr-demo", **parameters)` -> a PENDING task's id."""
    return submit


@pytest.fixture(name="query", scope="session")
def fixture_query():
    """`query(server, task_id, headers=None)`: GET /api/v1/tasks/{task_id}, which must be 200."""
    return query


@pytest.fixture(name="wait_done", scope="session")
def fixture_wait_done():
    """`wait_done(server, task_id, timeout=30)`: the task's answer once it is neither PENDING nor RUNNING."""
    return wait_done


@pytest.fixture(name="get_json", scope="session")
def fixture_get_json():
    """`get_json(url)`: a 200 answer's JSON."""
    return get_json


@pytest.fixture(name="replica_apps", scope="session")
def fixture_replica_apps():
    """`replica_apps(task_db, calls, count=2)`: apps sharing one task store, counting engine calls in `calls`."""
    return replica_apps
