"""The aiohttp application: routes, the engine's lifetime, and running it on a socket."""

import asyncio
import signal
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from qasr.engine import AsyncEngine
from qasr.serve.budget import AudioBudget
from qasr.serve.connections import ConnectionGuard, GuardedRunner, default_max_connections, listen_backlog
from qasr.serve.dashscope_api import cancel_task, get_result, get_task, list_tasks, submit_task
from qasr.serve.errors import error_middleware
from qasr.serve.metrics import Metrics
from qasr.serve.openai_api import create_transcription, engine_unavailable, list_models, retrieve_model
from qasr.serve.options import ServerOptions
from qasr.serve.state import STATE, ServerState, audio_pool, default_model_name
from qasr.serve.task_store import open_task_store
from qasr.serve.task_worker import TaskWorker


def create_app(engine: AsyncEngine, options: ServerOptions | None = None) -> web.Application:
    """The server for one running engine and task store; its startup starts the task worker, its cleanup stops
    the worker and shuts the engine down."""
    options = options or ServerOptions()
    guard = ConnectionGuard(options.max_connections or default_max_connections(), options.header_timeout_s,
                            options.keepalive_timeout_s)
    app = web.Application(middlewares=[guard.middleware, error_middleware], client_max_size=options.max_body_bytes)
    tasks = open_task_store(options.task_db)
    meters, pool, audio_budget = Metrics(engine, tasks), audio_pool(), AudioBudget(options.max_audio_seconds_in_flight)
    app[STATE] = ServerState(engine=engine, options=options,
                             model_names=options.served_model_names or [default_model_name(engine.engine.config.model)],
                             metrics=meters, audio_pool=pool, tasks=tasks,
                             worker=TaskWorker(tasks, engine, options, meters, pool, audio_budget),
                             connections=guard, audio_budget=audio_budget)
    app.router.add_post("/v1/audio/transcriptions", create_transcription)
    app.router.add_post("/api/v1/services/audio/asr/transcription", submit_task)
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/tasks/{task_id}", get_task)
    app.router.add_post("/api/v1/tasks/{task_id}/cancel", cancel_task)
    app.router.add_get("/api/v1/tasks/{task_id}/result", get_result)
    app.router.add_get("/api/v1/tasks/{task_id}/result/{index}", get_result)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_get("/health", health)
    app.router.add_get("/version", server_version)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_start_worker)
    app.on_cleanup.append(_shutdown)
    return app


async def health(request: web.Request) -> web.Response:
    """503 once the engine has died; 200 otherwise, "degraded" (with the reason) while the task store cannot be
    reached: the OpenAI API still works, only file-transcription tasks wait."""
    state = request.app[STATE]
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
    # handler_cancellation: a client that hangs up cancels its handler, and so aborts its engine request
    state = app[STATE]
    runner = GuardedRunner(app, state.connections, handler_cancellation=True,
                           keepalive_timeout=state.options.keepalive_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=listen_backlog()).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve_forever(app: web.Application, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serves until SIGINT or SIGTERM, then stops accepting, lets requests in flight finish, and cleans up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await start(app, host, port)
    try:
        bound_host, bound_port = runner.addresses[0][:2]
        on_ready(f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else f"http://{bound_host}:{bound_port}")
        await stop.wait()
    finally:
        await runner.cleanup()
