"""The task store's contract, checked against SQLite and against a real throwaway PostgreSQL server by the same
tests; then PostgreSQL's own cases, and two servers sharing one PostgreSQL database."""

import asyncio
import dataclasses
import json
import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest
from aiohttp import web

from qasr.benchmarks.processes import ThrowawayPostgres
from qasr.engine import AsyncEngine, EngineConfig
from qasr.serve.app import create_app
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    SqlTaskStore,
    Task,
    TaskRequest,
    TaskStore,
    open_task_store,
)
from qasr.serve.task_store_postgres import PostgresTaskStore


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "tasks.sqlite3")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(url: str):
    store = open_task_store(url)
    yield store
    store.close()


def new_task(task_id: str, submit_time: float | None = None, model: str = "m", key_hash: str | None = None) -> Task:
    task = Task(task_id=task_id, request=TaskRequest(model=model, file_urls=[f"http://x/{task_id}.wav"],
                                                     multi_file=False, key_hash=key_hash))
    if submit_time is not None:
        task.submit_time = submit_time
    return task


def ids(tasks: list[Task]) -> list[str]:
    return [task.task_id for task in tasks]


def test_the_url_picks_the_store(postgres) -> None:
    assert type(open_task_store(":memory:")) is TaskStore
    url = postgres.new_database()
    for scheme in ("postgresql://", "postgres://"):
        store = open_task_store(url.replace("postgresql://", scheme))
        assert type(store) is PostgresTaskStore
        store.close()


def test_add_and_get_round_trip(store: SqlTaskStore) -> None:
    task = Task(task_id="a", submit_time=1234567890.123456,
                request=TaskRequest(model="qwen3-asr", file_urls=["http://x/ü.wav", "http://x/b.opus"],
                                    multi_file=True, channels=[1, 0], language="English"))
    store.add(task)
    assert store.get("a") == task
    assert store.get("missing") is None


def test_claim_takes_the_oldest_first_up_to_the_limit(store: SqlTaskStore) -> None:
    now = time.time()
    for i in (2, 0, 4, 1, 3):
        store.add(new_task(f"t{i}", submit_time=now - 100 + i))
    assert store.claim("a", 0, 60) == []
    first = store.claim("a", 2, 60)
    assert ids(first) == ["t0", "t1"]
    for task in first:
        assert task.status == RUNNING and task.owner == "a" and task.attempts == 1
        assert task.scheduled_time == pytest.approx(time.time(), abs=5)
        assert task.lease_until == pytest.approx(time.time() + 60, abs=5)  # the database's clock, in epoch seconds
    assert store.get("t1") == first[1]
    assert ids(store.claim("b", 10, 60)) == ["t2", "t3", "t4"]
    assert store.claim("c", 10, 60) == []


def test_concurrent_claimers_never_share_a_task(url: str) -> None:
    setup = open_task_store(url)
    task_ids = [f"task-{i}" for i in range(100)]
    for task_id in task_ids:
        setup.add(new_task(task_id))
    claimed: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def claimer(i: int) -> None:
        store = open_task_store(url)
        start.wait()
        while batch := store.claim(f"worker-{i}", 3, 60):
            claimed[i] += ids(batch)
            for task in batch:
                task.status = SUCCEEDED
                assert store.finish(task)
        store.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(task_id for batch in claimed for task_id in batch) == sorted(task_ids)  # all claimed, none twice
    assert setup.counts()[SUCCEEDED] == len(task_ids)
    setup.close()


def test_only_the_owner_finishes_and_only_once(store: SqlTaskStore) -> None:
    store.add(new_task("a"))
    [task] = store.claim("owner", 1, 60)
    task.status, task.audio_seconds, task.end_time = SUCCEEDED, 12.5, time.time()
    task.results = [{"file_url": "http://x/a.wav", "status": SUCCEEDED, "document": {"text": "héllo, 世界"}}]
    assert not store.finish(dataclasses.replace(task, owner="someone-else"))
    assert store.get("a").status == RUNNING
    assert store.finish(task)
    assert not store.finish(task)
    done = store.get("a")
    assert (done.status, done.audio_seconds, done.results, done.lease_until) == (SUCCEEDED, 12.5, task.results, None)
    assert done.end_time == pytest.approx(task.end_time)


def test_renew_extends_only_the_owners_leases(store: SqlTaskStore) -> None:
    for i in range(3):
        store.add(new_task(f"t{i}", submit_time=i))
    store.claim("a", 3, lease_seconds=-1)  # already expired
    store.renew("a", ["t0", *(f"other-{i}" for i in range(600))], 60)  # more ids than SQLite binds at once
    store.renew("b", ["t1"], 60)
    assert store.requeue_expired() == ([], 2)
    t0, t1, t2 = (store.get(f"t{i}") for i in range(3))
    assert t0.status == RUNNING and t0.owner == "a" and t0.lease_until == pytest.approx(time.time() + 60, abs=5)
    for task in (t1, t2):
        assert (task.status, task.owner, task.lease_until, task.attempts) == (PENDING, None, None, 1)


def test_leases_run_out_on_time(store: SqlTaskStore) -> None:
    store.add(new_task("a"))
    store.claim("a", 1, lease_seconds=1.0)
    assert store.requeue_expired() == ([], 0)
    assert store.get("a").status == RUNNING
    time.sleep(1.2)
    assert store.requeue_expired() == ([], 1)
    assert store.get("a").status == PENDING


def test_a_task_interrupted_max_attempts_times_fails(url: str) -> None:
    store = open_task_store(url, max_attempts=2)
    store.add(new_task("poison", submit_time=1))
    store.add(new_task("healthy", submit_time=2))
    assert ids(store.claim("r1", 1, lease_seconds=-1)) == ["poison"]
    assert store.requeue_expired() == ([], 1)
    assert (store.get("poison").status, store.get("poison").attempts) == (PENDING, 1)
    assert ids(store.claim("r2", 1, lease_seconds=-1)) == ["poison"]
    assert ids(store.claim("r2", 1, lease_seconds=60)) == ["healthy"]
    [failed], requeued = store.requeue_expired()
    assert requeued == 0
    assert failed.task_id == "poison" and failed.status == FAILED and failed.code == "InternalError"
    assert "interrupted 2 times" in failed.message and failed.end_time == pytest.approx(time.time(), abs=5)
    assert store.get("poison") == failed and store.get("healthy").status == RUNNING
    assert store.claim("r3", 5, 60) == []
    store.close()


def test_a_task_whose_engine_died_counts_the_attempt_and_fails_at_the_limit(url: str) -> None:
    store = open_task_store(url, max_attempts=2)
    store.add(new_task("poison", submit_time=0))
    assert ids(store.claim("r1", 1, 60)) == ["poison"]
    assert store.interrupt("r2", "poison") is None and store.get("poison").status == RUNNING  # not r2's to give
    assert store.interrupt("r1", "poison") is None
    task = store.get("poison")
    assert (task.status, task.owner, task.lease_until, task.attempts) == (PENDING, None, None, 1)
    assert ids(store.claim("r2", 1, 60)) == ["poison"]
    failed = store.interrupt("r2", "poison")
    assert failed is not None and failed.status == FAILED and failed.code == "InternalError"
    assert "stopped 2 times" in failed.message and store.get("poison") == failed and store.claim("r3", 1, 60) == []
    store.close()


def test_release_hands_tasks_back_without_counting_the_attempt(store: SqlTaskStore) -> None:
    store.add(new_task("t0", submit_time=0))
    store.add(new_task("t1", submit_time=1))
    store.claim("a", 2, 60)
    store.release("b", ["t0"])
    assert store.get("t0").status == RUNNING
    store.release("a", ["t0", "t1"])
    for task_id in ("t0", "t1"):
        task = store.get(task_id)
        assert (task.status, task.owner, task.lease_until, task.attempts) == (PENDING, None, None, 0)
    assert [task.attempts for task in store.claim("b", 2, 60)] == [1, 1]


def test_only_pending_tasks_cancel(store: SqlTaskStore) -> None:
    store.add(new_task("running", submit_time=0))
    store.add(new_task("pending", submit_time=1))
    store.claim("a", 1, 60)
    canceled = store.cancel("pending")
    assert canceled.status == CANCELED and canceled.end_time == pytest.approx(time.time(), abs=5)
    assert store.get("pending") == canceled
    assert store.cancel("pending") is None and store.cancel("running") is None and store.cancel("missing") is None
    assert store.get("running").status == RUNNING
    assert store.claim("b", 5, 60) == []


def test_page_lists_newest_first_with_filters(store: SqlTaskStore) -> None:
    for i in range(5):
        store.add(new_task(f"t{i}", submit_time=100 + i, model="m1" if i % 2 == 0 else "m2",
                           key_hash="alice" if i < 2 else None))
    store.cancel("t3")
    tasks, total = store.page()
    assert ids(tasks) == ["t4", "t3", "t2", "t1", "t0"] and total == 5
    assert store.page(offset=1, limit=2) == (store.page()[0][1:3], 5)
    assert ids(store.page(offset=10)[0]) == [] and store.page(offset=10)[1] == 5
    assert ids(store.page(status=CANCELED)[0]) == ["t3"]
    assert (ids(store.page(model="m1")[0]), store.page(model="m1")[1]) == (["t4", "t2", "t0"], 3)
    assert store.page(status=PENDING, model="m2", limit=1) == ([store.get("t1")], 1)
    assert store.page(model="nobody") == ([], 0)
    assert ids(store.page(key_hash="alice")[0]) == ["t1", "t0"] and store.page(key_hash="bob") == ([], 0)
    assert ids(store.page(model="m1", key_hash="alice")[0]) == ["t0"]


def test_every_store_on_one_database_shares_one_secret(url: str) -> None:
    first, second = open_task_store(url), open_task_store(url)
    try:
        secret = first.secret("qasr")
        assert len(secret) == 32 and second.secret("qasr") == secret == first.secret("qasr")
        assert second.secret("another") not in (secret, b"")
    finally:
        first.close()
        second.close()


def test_counts_every_status(store: SqlTaskStore) -> None:
    assert store.counts() == dict.fromkeys(STATUSES, 0)
    for i in range(4):
        store.add(new_task(f"t{i}", submit_time=i))
    [done] = store.claim("a", 1, 60)
    done.status = FAILED
    store.finish(done)
    store.claim("a", 1, 60)
    store.cancel("t3")
    assert store.counts() == {PENDING: 1, RUNNING: 1, SUCCEEDED: 0, FAILED: 1, CANCELED: 1}


def test_purge_deletes_only_old_finished_tasks(store: SqlTaskStore) -> None:
    now = time.time()
    for i, task_id in enumerate(("old-done", "new-done", "old-running", "old-pending")):
        store.add(new_task(task_id, submit_time=now - 1000 + i))
    for task in store.claim("a", 3, 60)[:2]:
        task.status, task.end_time = SUCCEEDED, now - (500 if task.task_id == "old-done" else 10)
        assert store.finish(task)
    assert store.purge(now - 100) == 1
    assert store.get("old-done") is None
    assert ids(store.page()[0]) == ["old-pending", "old-running", "new-done"]
    assert store.purge(now + 10) == 1  # RUNNING and PENDING tasks stay, whatever their age
    assert ids(store.page()[0]) == ["old-pending", "old-running"]


def test_tasks_outlive_the_store_object(url: str) -> None:
    first = open_task_store(url)
    for i in range(3):
        first.add(new_task(f"t{i}", submit_time=i))
    [done] = first.claim("a", 1, 60)
    done.status, done.results = SUCCEEDED, [{"file_url": "http://x/t0.wav", "document": {"text": "kept"}}]
    first.finish(done)
    before = [first.get(f"t{i}") for i in range(3)]
    first.close()
    second = open_task_store(url)
    assert [second.get(f"t{i}") for i in range(3)] == before
    assert ids(second.claim("b", 5, 60)) == ["t1", "t2"]
    second.close()


def test_postgres_claim_skips_rows_another_replica_holds(postgres) -> None:
    url = postgres.new_database()
    store = open_task_store(url)
    store.add(new_task("t0", submit_time=0))
    store.add(new_task("t1", submit_time=1))
    with psycopg.connect(url) as other:  # a transaction of another replica, in the middle of claiming t0
        other.execute("SELECT task_id FROM tasks WHERE task_id = 't0' FOR UPDATE")
        claimed: list[Task] = []
        thread = threading.Thread(target=lambda: claimed.extend(store.claim("a", 2, 60)))
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "claim waited for the other transaction's lock"
        other.rollback()
    assert ids(claimed) == ["t1"]
    assert ids(store.claim("a", 2, 60)) == ["t0"]
    store.close()


def test_postgres_store_reconnects_after_the_connection_drops(postgres) -> None:
    url = postgres.new_database()
    store = open_task_store(url)
    store.add(new_task("a"))
    postgres.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                           (url.rsplit("/", 1)[1],))
    with pytest.raises(psycopg.OperationalError):
        store.get("a")
    assert store.get("a").task_id == "a"
    store.close()


@pytest.fixture(scope="module")
def files(live_server, heldout):
    async def audio(request: web.Request) -> web.FileResponse:
        return web.FileResponse(heldout / request.match_info["name"])

    app = web.Application()
    app.router.add_get("/audio/{name}", audio)
    live = live_server(app)
    yield live
    live.close()


def test_two_servers_on_one_postgres_database_run_each_task_once(postgres, files, live_server, heldout, metric_values,
                                                                 submit, wait_done, get_json, replica_apps) -> None:
    url = postgres.new_database()
    clips = [json.loads(line)["file"] for line in (heldout / "manifest.jsonl").read_text().splitlines()[:3]]
    store = open_task_store(url)
    preloaded = [f"shared-{i}" for i in range(6)]  # waiting before either server starts: both claim at once
    for i, task_id in enumerate(preloaded):
        store.add(Task(task_id=task_id, request=TaskRequest(
            model="qasr-demo", file_urls=[f"{files.url}/audio/{clips[i % 3]}"], multi_file=False)))
    calls: list[int] = []
    apps = replica_apps(url, calls)
    servers = [live_server(app) for app in apps]
    try:
        submitted = [submit(servers[0], f"{files.url}/audio/{clips[i % 3]}") for i in range(6, 8)]
        clip_of = {task_id: clips[i % 3] for i, task_id in enumerate(preloaded + submitted)}
        texts: dict[str, set[str]] = {clip: set() for clip in clips}
        for i, task_id in enumerate(preloaded + submitted):
            output = wait_done(servers[i % 2], task_id)["output"]  # either server answers for every task
            assert output["task_status"] == SUCCEEDED, output
            texts[clip_of[task_id]].add(get_json(output["result"]["transcription_url"])["transcripts"][0]["text"])
        assert all(len(same) == 1 and "" not in same for same in texts.values())  # one clip, one transcript
        assert {store.get(task_id).owner for task_id in preloaded} == {live.state.worker.owner for live in servers}
        assert len(calls) == len(preloaded) + len(submitted)
        assert all(store.get(task_id).attempts == 1 for task_id in preloaded + submitted)
        succeeded = ("qasr_async_tasks", (("status", "succeeded"),))
        assert [metric_values(live.url)[succeeded] for live in servers] == [len(calls)] * 2  # the shared store's
        servers[1].state.tasks.db.close()  # as if the database were gone: /metrics still answers, without the counts
        after = metric_values(servers[1].url)
        assert succeeded not in after and ("qasr_async_tasks_finished_total", (("status", "succeeded"),)) in after
    finally:
        for live in servers:
            live.close()
        store.close()


def test_store_calls_run_on_the_stores_own_threads(store: SqlTaskStore) -> None:
    """Not on asyncio's default executor, which aiohttp needs for DNS and for spooling uploads."""
    async def names() -> tuple[str, str]:
        def name() -> str:
            return threading.current_thread().name

        return await store.run(name), await store.run(name, read=True)

    write, read = asyncio.run(names())
    assert write.startswith("qasr-store-write") and read.startswith("qasr-store-read")


def test_release_owner_hands_back_every_running_task_of_an_owner(store: SqlTaskStore) -> None:
    for i in range(3):
        store.add(new_task(f"t{i}", submit_time=i))
    store.claim("a", 2, 60)
    store.claim("b", 1, 60)
    assert store.release_owner("a") == 2
    assert [(store.get(f"t{i}").status, store.get(f"t{i}").attempts) for i in range(3)] == \
        [(PENDING, 0), (PENDING, 0), (RUNNING, 1)]
    assert store.renew("b", ["t0", "t1", "t2"], 60) == {"t2"}  # renew says which tasks the owner still holds


def test_sqlite_reads_do_not_wait_behind_a_blocked_write(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.sqlite3")
    store.add(new_task("a"))
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] <= 5000  # well under a lease
    other = sqlite3.connect(tmp_path / "tasks.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    writer = threading.Thread(target=store.add, args=(new_task("b"),))
    writer.start()
    try:
        time.sleep(0.2)  # the write now waits on the busy lock, holding the store's write lock
        started = time.monotonic()
        assert store.get("a").task_id == "a" and store.counts()[PENDING] == 1
        assert time.monotonic() - started < 1.0
    finally:
        other.execute("ROLLBACK")
        other.close()
        writer.join(10)
        store.close()


def test_postgres_connections_time_out(postgres) -> None:
    """A database host gone from the network must fail store calls, not hang them; the URL's settings win."""
    url = postgres.new_database()
    store = open_task_store(url)
    assert store.db.execute("SHOW statement_timeout").fetchone()[0] == "10s"
    assert store.params["connect_timeout"] == "5" and "connect_timeout=5" in store.db.info.dsn
    store.close()
    store = open_task_store(url + "?connect_timeout=2&options=-c%20statement_timeout%3D1234")
    assert store.db.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
    assert "connect_timeout=2" in store.db.info.dsn
    store.close()


def test_a_database_outage_is_503_with_retry_after_and_a_degraded_health(files, live_server, heldout, http,
                                                                          metric_values, submit, wait_done) -> None:
    database = ThrowawayPostgres()  # one of its own: it goes down in this test
    clip = json.loads((heldout / "manifest.jsonl").read_text().splitlines()[0])["file"]
    server = live_server(create_app(AsyncEngine(EngineConfig(max_num_seqs=4)),
                                    ServerOptions(task_db=database.new_database(), allow_private_urls=True)))
    submit_url = server.url + "/api/v1/services/audio/asr/transcription"
    body = json.dumps({"model": "qasr-demo", "input": {"file_url": f"{files.url}/audio/{clip}"}})
    headers = {"X-DashScope-Async": "enable", "Content-Type": "application/json"}
    try:
        task_id = submit(server, f"{files.url}/audio/{clip}")
        assert wait_done(server, task_id)["output"]["task_status"] == SUCCEEDED
        database.admin.close()
        database.pause()
        for response in (http("POST", submit_url, body, headers), http("GET", f"{server.url}/api/v1/tasks/{task_id}")):
            status, answer_headers, answer = response
            assert status == 503 and answer_headers["Retry-After"] == "5", answer
            assert json.loads(answer)["code"] == "ServiceUnavailable"
        status, _, answer = http("GET", server.url + "/health")  # the OpenAI API still serves
        health = json.loads(answer)
        assert status == 200 and health["status"] == "degraded" and "unreachable" in health["task_store"]
        assert metric_values(server.url)[("qasr_task_store_up", ())] == 0
        database.start()
        deadline = time.monotonic() + 30
        while json.loads(http("GET", server.url + "/health")[2])["status"] != "ok":  # the worker's next round
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert metric_values(server.url)[("qasr_task_store_up", ())] == 1
        assert wait_done(server, submit(server, f"{files.url}/audio/{clip}"))["output"]["task_status"] == SUCCEEDED
    finally:
        server.close()
        database.admin = psycopg.connect(database.url("postgres"), autocommit=True)
        database.stop()


def test_add_once_keeps_the_first_task_of_an_id(store: SqlTaskStore) -> None:
    first = store.add_once(new_task("same", model="first"))
    second = store.add_once(new_task("same", model="second"))
    assert first.request.model == second.request.model == "first"
    assert store.counts()[PENDING] == 1
