"""qasr: a high-throughput serving engine for the Qwen3-ASR speech recognition models.

    from qasr import ASR, SamplingParams

The names come from `qasr.engine` on first use, so importing qasr (and the `qasr` command) loads no torch.
"""

from typing import TYPE_CHECKING, Any

from qasr import engine

__all__ = engine.__all__


def __getattr__(name: str) -> Any:
    if name in engine.__all__:
        return getattr(engine, name)
    raise AttributeError(f"module 'qasr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see of the names above
    from qasr.engine import ASR as ASR
    from qasr.engine import AsyncEngine as AsyncEngine
    from qasr.engine import EngineConfig as EngineConfig
    from qasr.engine import Language as Language
    from qasr.engine import RequestOutput as RequestOutput
    from qasr.engine import SamplingParams as SamplingParams
    from qasr.engine import Segment as Segment
    from qasr.engine import Transcription as Transcription
    from qasr.engine import TranscriptionRequest as TranscriptionRequest
