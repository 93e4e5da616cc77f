import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from engine import AsyncEngine
from serve.metrics import Metrics
from serve.task_store import SqlTaskStore
from serve.task_worker import TaskWorker

DEMO_MODEL_NAME = "qasr-demo"
FORM_OVERHEAD_BYTES = 64 << 10


@dataclass(slots=True)
class ServerOptions:
    served_model_names: list[str] = field(default_factory=list)  # empty: a name derived from the model
    max_upload_mb: float = 25.0  # OpenAI's and vLLM's limit
    max_queued_requests: int = 1024  # requests beyond the engine's max_num_seqs that may wait; more get 429
    max_prompt_chars: int = 4096  # a longer `prompt` (context) is a 400
    upload_timeout_s: float = 60.0  # a transcription request's whole body must arrive within this, or 408
    sse_keepalive_s: float = 15.0  # a streamed response waiting for its first token sends an SSE comment this often
    # DashScope-style file transcription tasks
    # a SQLite file (":memory:": this process only), or postgresql://... for replicas on several hosts
    task_db: str = ".qasr/tasks.sqlite3"
    max_running_tasks: int = 64  # tasks this server runs at once (the engine batches them); 0: run none
    max_fetch_mb: float = 512.0  # largest file_url download
    fetch_timeout_s: float = 300.0  # a whole download, redirects included
    allow_private_urls: bool = False  # let file_url reach private, loopback and link-local addresses
    max_audio_seconds: float = 3 * 3600.0  # an upload longer than this is a 400; a task's file fails (per channel)
    task_lease_s: float = 30.0  # a RUNNING task whose server stops renewing for this long runs again elsewhere
    task_ttl_hours: float = 24.0  # finished tasks and their results are deleted after this, as DashScope does
    public_url: str | None = None  # base of result URLs; None: from the request's Host and X-Forwarded-* headers
    # GET /api/v1/tasks shows every client's tasks (their file URLs, presigned credentials included): off unless asked
    enable_task_listing: bool = False

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "upload_timeout_s", "sse_keepalive_s", "max_fetch_mb", "fetch_timeout_s",
                     "max_audio_seconds", "task_lease_s", "task_ttl_hours"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_queued_requests", "max_running_tasks", "max_prompt_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def max_fetch_bytes(self) -> int:
        return int(self.max_fetch_mb * (1 << 20))

    @property
    def max_body_bytes(self) -> int:
        """The upload plus room for the other form fields and the multipart framing."""
        return self.max_upload_bytes + FORM_OVERHEAD_BYTES


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
