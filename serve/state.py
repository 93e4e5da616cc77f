import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from qasr.engine import AsyncEngine
from qasr.serve.auth import KeyRing
from qasr.serve.budget import AudioBudget
from qasr.serve.connections import ConnectionGuard
from qasr.serve.drain import Drain
from qasr.serve.metrics import Metrics
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import SqlTaskStore
from qasr.serve.task_worker import TaskWorker

DEMO_MODEL_NAME = "qasr-demo"


@dataclass(slots=True)
class ServerState:
    """What the handlers share; it lives in the app under STATE and is touched only from the event loop."""

    engine: AsyncEngine
    options: ServerOptions
    model_names: list[str]
    metrics: Metrics
    audio_pool: ThreadPoolExecutor  # decodes uploads off the event loop
    tasks: SqlTaskStore
    worker: TaskWorker
    connections: ConnectionGuard
    audio_budget: AudioBudget  # seconds of decoded audio in flight: uploads and task files
    keys: KeyRing
    drain: Drain
    secret: bytes | None = None  # the task store's, shared by every replica: read on first use (auth.caller_id)
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0  # transcription requests whose form was read, not yet answered

    @property
    def max_in_flight(self) -> int:
        """The engine runs up to max_num_seqs requests at once; up to max_queued_requests more may wait."""
        return self.engine.engine.config.max_num_seqs + self.options.max_queued_requests

    @property
    def engine_failed(self) -> bool:
        return not self.engine.is_running


STATE = web.AppKey("qasr_state", ServerState)


def default_model_name(model: str | None) -> str:
    """The bundled demo -> "qasr-demo"; a local folder -> its name; a Hugging Face id -> the id itself."""
    if model is None:
        return DEMO_MODEL_NAME
    if os.path.isdir(model):
        return Path(model).resolve().name
    return model


def audio_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="qasr-audio")
