import math
from dataclasses import dataclass, field

import numpy as np

from qasr.engine.languages import Language, resolve_language
from qasr.scheduler import SamplingParams


class InvalidRequest(ValueError):
    """A request the engine cannot run, because of its `field` ("audio", "context", "language" or
    "word_timestamps"): the client's to fix."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


# The most tokens a transcript can need: a header (`language English<asr_text>`) and fast speech in any language
# (about 6 tokens a second in English and Chinese) with room to spare. A longer output is the model repeating itself.
HEADER_TOKENS = 32
MAX_TOKENS_PER_AUDIO_SECOND = 25


def output_token_cap(audio_seconds: float) -> int:
    """What a transcript of `audio_seconds` of audio can need, at most."""
    return HEADER_TOKENS + math.ceil(MAX_TOKENS_PER_AUDIO_SECOND * audio_seconds)


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """One audio to transcribe, as it travels from a client (HTTP form, task, Python call) into the engine."""

    audio: np.ndarray  # float32 mono samples at the model's sample rate (16 kHz): see audio.load_audio
    language: Language | None = None  # forced language ("en", "English" resolve here); None: the model detects it
    context: str = ""  # text for the system prompt: hotwords, names, background
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    word_timestamps: bool = False  # time each word with the forced aligner (EngineConfig.aligner_model)
    # text deltas as the tokens come; False: the text once, with the result, and no text work per token meanwhile
    # (as vLLM's FINAL_ONLY outputs: what a caller that waits for the whole transcript wants)
    stream: bool = True
    request_id: str | None = None  # None: the engine names it
    arrival_time: float | None = None  # time.monotonic() of arrival; None: when the engine takes it

    def __post_init__(self) -> None:
        object.__setattr__(self, "language", resolve_language(self.language))
