"""The forced aligner's input and output processing: a finished piece's transcript and audio -> an alignment job
(its prompt), and the job's time classes -> timed words."""

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from qasr.engine.audio_encoder import num_audio_tokens
from qasr.engine.features import FeatureConfig
from qasr.engine.input_processor import content_hash
from qasr.engine.model_config import ModelConfig
from qasr.engine.outputs import Word
from qasr.engine.tokenizer import special_tokens
from qasr.engine.words import WordSpan, split_words, timed_words
from qasr.scheduler import AlignmentJob, AudioSpan


@dataclass(slots=True)
class PieceAlignment:
    """What a piece's words need once its job comes back."""

    job: AlignmentJob
    text: str
    spans: list[WordSpan]
    offset: float  # the piece's start in the request's audio, seconds


class AlignmentProcessor:

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ModelConfig, features: FeatureConfig):
        if config.aligner is None:
            raise ValueError("AlignmentProcessor needs a forced aligner's config")
        self.tokenizer = tokenizer
        self.special = special_tokens(tokenizer, config)
        self.features = features
        self.segment_ms = config.aligner.segment_ms
        self.timestamp = tokenizer.convert_ids_to_tokens(config.aligner.timestamp_token_id)
        if tokenizer.convert_tokens_to_ids(self.timestamp) != config.aligner.timestamp_token_id:
            raise ValueError(f"the aligner's tokenizer has no token of id {config.aligner.timestamp_token_id} "
                             "(timestamp_token_id)")

    def job(self, text: str, samples: np.ndarray, offset: float,
            language: str | None = None) -> PieceAlignment | None:
        """The job aligning `text` (in `language`) against its piece's `samples`; None when the text has no word
        to time."""
        spans = split_words(text, language)
        if not spans:
            return None
        audio_tokens = num_audio_tokens(self.features.num_frames(len(samples)))
        slots = self.timestamp * 2
        words = self.tokenizer.encode("".join(span.text + slots for span in spans), add_special_tokens=False)
        prompt = [self.special.audio_start, *[self.special.audio_pad] * audio_tokens, self.special.audio_end, *words]
        audio = AudioSpan(1, audio_tokens, content_hash(samples))
        return PieceAlignment(AlignmentJob(prompt, audio), text, spans, offset)

    def words(self, alignment: PieceAlignment, classes: np.ndarray) -> list[Word]:
        if len(classes) != 2 * len(alignment.spans):
            raise RuntimeError(f"the aligner gave {len(classes)} time slots for {len(alignment.spans)} words")
        return timed_words(alignment.text, alignment.spans, classes, self.segment_ms, alignment.offset)
