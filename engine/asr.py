from collections.abc import Sequence as SequenceOf
from dataclasses import fields

from tqdm import tqdm

from qasr.engine.audio import AudioInput, load_audio
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

    @classmethod
    def from_config(cls, config: EngineConfig) -> "ASR":
        return cls(**{field.name: getattr(config, field.name) for field in fields(config)})

    def transcribe(self, audio: AudioInput | SequenceOf[AudioInput], language: str | list[str | None] | None = None,
                   context: str | list[str] = "", sampling_params: SamplingParams | None = None,
                   use_tqdm: bool = False, word_timestamps: bool = False) -> list[Transcription]:
        """`language` and `context` apply to every audio, or give one value per audio in a list.
        `word_timestamps` (with an `aligner_model`): each result's words timed, and its segments sentence-sized."""
        audios = list(audio) if isinstance(audio, list) else [audio]
        languages = _per_item(language, len(audios), "language")
        contexts = _per_item(context, len(audios), "context")
        params = sampling_params or SamplingParams()
        requests = [TranscriptionRequest(load_audio(item), language=lang, context=ctx or "", sampling_params=params,
                                         word_timestamps=word_timestamps, stream=False)
                    for item, lang, ctx in zip(audios, languages, contexts)]
        request_ids: list[str] = []
        try:
            for request in requests:
                request_ids.append(self.engine.add_request(request))
        except Exception:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        results: dict[str, Transcription] = {}
        with tqdm(total=len(request_ids), desc="transcribing", unit="audio", disable=not use_tqdm) as bar:
            try:
                while self.engine.has_unfinished:
                    for output in self.engine.step():
                        if output.finished and output.result is not None:
                            results[output.request_id] = output.result
                            bar.update(1)
            except BaseException:
                for request_id in request_ids:
                    self.engine.abort(request_id)
                raise
        return [results[request_id] for request_id in request_ids]


def _per_item(value: object, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"got {len(value)} {name} values for {count} audios")
        return value
    return [value] * count
