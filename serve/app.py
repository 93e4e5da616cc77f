"""The aiohttp application: routes, the engine's lifetime, and running it on a socket."""

import asyncio
import logging
import signal
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from qasr.engine import AsyncEngine
from qasr.serve.auth import Authenticator, KeyRing
from qasr.serve.budget import AudioBudget
from qasr.serve.connections import ConnectionGuard, GuardedRunner, default_max_connections, listen_backlog
from qasr.serve.dashscope_api import cancel_task, get_result, get_task, list_tasks, submit_task
from qasr.serve.drain import Drain
from qasr.serve.errors import error_middleware
from qasr.serve.metrics import Metrics
from qasr.serve.openai_api import create_transcription, engine_unavailable, list_models, retrieve_model
from qasr.serve.options import ServerOptions
from qasr.serve.state import STATE, ServerState, audio_pool, default_model_name
from qasr.serve.task_store import open_task_store
from qasr.serve.task_worker import TaskWorker

logger = logging.getLogger("qasr.serve")
DRAIN_POLL_S = 0.05
ANSWER_GRACE_S = 5.0  # after the engine stops, for the requests it failed to send their 503s


def create_app(engine: AsyncEngine, options: ServerOptions | None = None) -> web.Application:
    """The server for one running engine and task store; its startup starts the task worker, its cleanup stops
    the worker and shuts the engine down."""
    options = options or ServerOptions()
    guard = ConnectionGuard(options.max_connections or default_max_connections(), options.header_timeout_s,
                            options.keepalive_timeout_s)
    keys, drain = KeyRing(options.api_keys, options.api_key_file), Drain()
    tasks, pool = open_task_store(options.task_db), audio_pool()
    audio_budget = AudioBudget(options.max_audio_seconds_in_flight)
    meters = Metrics(engine, tasks, audio_budget, drain)
    # outermost first: the guard sees every connection, a draining server turns requests away before anything
    # else, and errors (a 401 among them) are rendered in the route's shape
    middlewares = [guard.middleware, drain.middleware, error_middleware,
                   Authenticator(keys, meters.auth_failures).middleware]
    app = web.Application(middlewares=middlewares, client_max_size=options.max_body_bytes)
    app[STATE] = ServerState(engine=engine, options=options,
                             model_names=options.served_model_names or [default_model_name(engine.engine.config.model)],
                             metrics=meters, audio_pool=pool, tasks=tasks,
                             worker=TaskWorker(tasks, engine, options, meters, pool, audio_budget),
                             connections=guard, audio_budget=audio_budget, keys=keys, drain=drain)
    app.router.add_post("/v1/audio/transcriptions", create_transcription)
    app.router.add_post("/api/v1/services/audio/asr/transcription", submit_task)
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/tasks/{task_id}", get_task)
    app.router.add_post("/api/v1/tasks/{task_id}/cancel", cancel_task)
    app.router.add_get("/api/v1/tasks/{task_id}/result", get_result, name="task_result")
    app.router.add_get("/api/v1/tasks/{task_id}/result/{index}", get_result, name="task_result_file")
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_get("/health", health)
    app.router.add_get("/version", server_version)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_start_worker)
    app.on_cleanup.append(_shutdown)
    return app


async def health(request: web.Request) -> web.Response:
    """503 while draining and once the engine has died; 200 otherwise, "degraded" (with the reason) while the task
    store cannot be reached: the OpenAI API still works, only file-transcription tasks wait."""
    state = request.app[STATE]
    if state.drain.draining:
        return web.json_response({"status": "draining"}, status=503, headers={"Retry-After": "1"})
    if state.engine_failed:
        raise engine_unavailable()
    if not state.tasks.up:
        return web.json_response({"status": "degraded", "task_store": f"unreachable: {state.tasks.problem}"})
    return web.json_response({"status": "ok"})


async def server_version(request: web.Request) -> web.Response:
    try:
        number = version("qasr")
    except PackageNotFoundError:  # running from a source tree that was never installed
        number = "unknown"
    return web.json_response({"version": number})


async def metrics(request: web.Request) -> web.Response:
    # off the event loop: the task counts are a database query, over the network with PostgreSQL
    state = request.app[STATE]
    response = web.Response(body=await state.tasks.run(state.metrics.render, read=True))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _start_worker(app: web.Application) -> None:
    app[STATE].connections.start()
    await app[STATE].worker.start()


async def _shutdown(app: web.Application) -> None:
    state = app[STATE]
    await state.connections.stop()
    await state.worker.stop()  # first: its tasks go back to PENDING while the engine can still abort them
    await asyncio.to_thread(state.tasks.close)
    state.audio_pool.shutdown(wait=False, cancel_futures=True)
    await asyncio.to_thread(state.engine.shutdown)


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serves `app` on host:port (port 0: any free one; see runner.addresses) until runner.cleanup()."""
    # handler_cancellation: a client that hangs up cancels its handler, and so aborts its engine request.
    # shutdown_timeout: at cleanup the drain has already waited for the requests in flight; one still running then
    # (its engine stuck) gets ANSWER_GRACE_S more, not aiohttp's 60 s, so the exit after SIGTERM stays bounded
    state = app[STATE]
    runner = GuardedRunner(app, state.connections, handler_cancellation=True, shutdown_timeout=ANSWER_GRACE_S,
                           keepalive_timeout=state.options.keepalive_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=listen_backlog()).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def drain_and_stop(app: web.Application, now: asyncio.Event) -> None:
    """Turns new requests away (and /health to 503), waits for the requests and tasks in flight up to
    --drain-timeout-s or until `now` is set, then stops the task worker (its unfinished tasks go back to PENDING
    for other replicas) and the engine, whose unfinished requests answer 503."""
    state = app[STATE]
    state.drain.begin()
    state.worker.claiming = False
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + state.options.drain_timeout_s
    logger.info("draining: %d requests and %d tasks in flight (up to %g s; SIGTERM again stops at once)",
                state.drain.in_flight, len(state.worker.running), state.options.drain_timeout_s)
    while (state.drain.in_flight or state.worker.running) and loop.time() < deadline and not now.is_set():
        await asyncio.sleep(DRAIN_POLL_S)
    if state.drain.in_flight or state.worker.running:
        logger.warning("drain ended with %d requests and %d tasks unfinished: the requests get 503, the tasks go "
                       "back to PENDING", state.drain.in_flight, len(state.worker.running))
    drained = loop.time()
    await state.worker.stop()
    await asyncio.to_thread(state.engine.shutdown)
    # each step's length, so that a replica slow to exit says where its time went
    logger.info("drained in %.1f s; task worker and engine stopped %.1f s later", drained - began,
                loop.time() - drained)
    if state.drain.in_flight:
        await asyncio.wait([asyncio.ensure_future(state.drain.idle.wait())], timeout=ANSWER_GRACE_S)


async def serve_forever(app: web.Application, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serves until SIGTERM or SIGINT, then drains (drain_and_stop) and cleans up; a second signal cuts the drain
    short. SIGHUP reads the API key file again."""
    stop, now = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        (now if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, reload_keys, app[STATE].keys)
    runner = await start(app, host, port)
    try:
        bound_host, bound_port = runner.addresses[0][:2]
        on_ready(f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}")
        await stop.wait()
        await drain_and_stop(app, now)
    finally:
        await runner.cleanup()


def reload_keys(keys: KeyRing) -> None:
    try:
        count = keys.reload()
    except (OSError, ValueError) as error:
        logger.error("SIGHUP: kept the API keys as they were: cannot read %s: %s", keys.key_file, error)
        return
    logger.info("SIGHUP: %d API keys now accepted", count)
