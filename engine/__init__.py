"""The engine's public names, imported on first use: `import qasr.engine` loads no torch.

ASR is the synchronous face (offline batches), AsyncEngine the one servers drive; both take audio and
give back Transcriptions.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_MODULE_OF = {
    "ASR": "qasr.engine.asr",
    "AsyncEngine": "qasr.engine.async_engine",
    "EngineConfig": "qasr.engine.config",
    "Language": "qasr.engine.languages",
    "RequestOutput": "qasr.engine.outputs",
    "SamplingParams": "qasr.scheduler.sampling_params",
    "Segment": "qasr.engine.outputs",
    "Transcription": "qasr.engine.outputs",
    "TranscriptionRequest": "qasr.engine.request",
    "Word": "qasr.engine.outputs",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'qasr.engine' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see of the names above
    from qasr.engine.asr import ASR as ASR
    from qasr.engine.async_engine import AsyncEngine as AsyncEngine
    from qasr.engine.config import EngineConfig as EngineConfig
    from qasr.engine.languages import Language as Language
    from qasr.engine.outputs import RequestOutput as RequestOutput
    from qasr.engine.outputs import Segment as Segment
    from qasr.engine.outputs import Transcription as Transcription
    from qasr.engine.outputs import Word as Word
    from qasr.engine.request import TranscriptionRequest as TranscriptionRequest
    from qasr.scheduler.sampling_params import SamplingParams as SamplingParams
