import os
import threading
from collections.abc import Sequence as SequenceOf
from dataclasses import fields

import numpy as np
from tqdm import tqdm

from qasr.engine.audio import AudioError, AudioInput, load_audio
from qasr.engine.config import EngineConfig
from qasr.engine.llm_engine import LLMEngine
from qasr.engine.outputs import Transcription
from qasr.engine.request import TranscriptionRequest
from qasr.scheduler import SamplingParams


class ASR:
    """Offline transcription: the thin synchronous face of the engine."""

    def __init__(self, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 **engine_options: object):
        self.engine = LLMEngine(EngineConfig.from_options(model=model, device=device, dtype=dtype,
                                                          **engine_options))
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: EngineConfig) -> "ASR":
        return cls(**{field.name: getattr(config, field.name) for field in fields(config)})

    def transcribe(self, audio: AudioInput | SequenceOf[AudioInput], language: str | list[str | None] | None = None,
                   context: str | list[str] = "", sampling_params: SamplingParams | None = None,
                   use_tqdm: bool = False, word_timestamps: bool = False) -> list[Transcription]:
        """`language` and `context` apply to every audio, or give one value per audio in a list.
        `word_timestamps` (with an `aligner_model`): each result's words timed, and its segments sentence-sized.
        Calls from several threads take turns (for requests that run together, use `AsyncEngine`)."""
        audios = [audio] if _one_audio(audio) else list(audio)
        languages = _per_item(language, len(audios), "language")
        contexts = _per_item(context, len(audios), "context")
        params = sampling_params or SamplingParams()
        requests = [TranscriptionRequest(_load(item, index), language=lang, context=ctx or "", sampling_params=params,
                                         word_timestamps=word_timestamps, stream=False)
                    for index, (item, lang, ctx) in enumerate(zip(audios, languages, contexts))]
        with self._lock:  # one caller steps the engine at a time: each takes the outputs of its own requests
            return self._run(requests, use_tqdm)

    def _run(self, requests: list[TranscriptionRequest], use_tqdm: bool) -> list[Transcription]:
        request_ids: list[str] = []
        try:
            for request in requests:
                request_ids.append(self.engine.add_request(request))
        except Exception:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        results: dict[str, Transcription] = {}
        # no bar at all unless asked: even a disabled one may start tqdm's monitor thread
        bar = tqdm(total=len(request_ids), desc="transcribing", unit="audio") if use_tqdm else None
        try:
            while self.engine.has_unfinished:
                for output in self.engine.step():
                    if output.finished and output.result is not None:
                        results[output.request_id] = output.result
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[request_id] for request_id in request_ids]


def _one_audio(audio: object) -> bool:
    """One input, or a sequence of them: a tuple is one `(array, sample_rate)` only if it looks like one, so that
    a tuple of paths is several files."""
    if isinstance(audio, tuple):
        return (len(audio) == 2 and isinstance(audio[1], int | float)
                and not isinstance(audio[0], str | os.PathLike | bytes | bytearray))
    return isinstance(audio, str | os.PathLike | bytes | bytearray | np.ndarray)


def _load(item: AudioInput, index: int) -> np.ndarray:
    """The audio of `item`, or an AudioError that says which of the inputs it was."""
    try:
        return load_audio(item)
    except AudioError as error:
        name = os.fspath(item) if isinstance(item, str | os.PathLike) else f"audio {index}"
        raise AudioError(str(error) if name in str(error) else f"{name}: {error}") from error


def _per_item(value: object, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"got {len(value)} {name} values for {count} audios")
        return value
    return [value] * count
