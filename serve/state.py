import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from engine import AsyncEngine
from serve.metrics import Metrics

DEMO_MODEL_NAME = "qasr-demo"
FORM_OVERHEAD_BYTES = 64 << 10


@dataclass(slots=True)
class ServerOptions:
    served_model_names: list[str] = field(default_factory=list)  # empty: a name derived from the model
    max_upload_mb: float = 25.0  # OpenAI's and vLLM's limit
    max_queued_requests: int = 1024  # requests beyond the engine's max_num_seqs that may wait; more get 429

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

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
    created: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0  # transcription requests accepted and not yet answered

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
