"""The Qwen3-ASR prompt format, both ways: the prompt's token ids (system context, audio placeholders, an optional
forced-language prefill), and the model's answer `language X<asr_text>text` parsed back into language and text,
whole or as a stream."""

import re
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from qasr.engine.languages import Language
from qasr.engine.repetitions import RepetitionFilter
from qasr.engine.request import InvalidRequest
from qasr.engine.tokenizer import SpecialTokens

PROMPT_TEMPLATE = (
    "<|im_start|>system\n{context}<|im_end|>\n"
    "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
    "<|im_start|>assistant\n{prefill}"
)
LANGUAGE_PREFIX = "language "
ASR_TEXT_TAG = "<asr_text>"
HEADER_CUT_SHORT = re.compile(r"language(\s+\S+)?", re.IGNORECASE)  # what max_tokens of 1 or 2 leave of a header

MAX_CACHED_CONTEXT_CHARS = 2048


def language_header(language: str) -> str:
    """What the model writes before the text, and what a forced language prefills: `language English<asr_text>`."""
    return f"{LANGUAGE_PREFIX}{language}{ASR_TEXT_TAG}"


class PromptBuilder:
    """Token ids of the Qwen3-ASR transcription prompt: system context, the audio placeholders, and an
    optional forced-language prefill `language X<asr_text>`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, special: SpecialTokens):
        self.tokenizer = tokenizer
        self.special = special
        self.special_strings = [t for t in {*tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder} if t]
        self.cached_template_ids = lru_cache(maxsize=1024)(self._template_ids)

    def build(self, num_audio_tokens: int, context: str = "",
              language: Language | None = None) -> tuple[list[int], int]:
        """Returns (prompt ids, index of the first audio placeholder)."""
        # a long context (a document pasted as hotwords) is tokenized each time rather than held in the cache
        template_ids = self.cached_template_ids if len(context) <= MAX_CACHED_CONTEXT_CHARS else self._template_ids
        before, after = template_ids(context, language)
        return before + [self.special.audio_pad] * num_audio_tokens + after, len(before)

    def num_template_tokens(self, context: str = "", language: Language | None = None) -> int:
        """Prompt tokens besides the audio placeholders (tokenized afresh: nothing enters the cache)."""
        before, after = self._template_ids(context, language)
        return len(before) + len(after)

    def _template_ids(self, context: str, language: Language | None) -> tuple[list[int], list[int]]:
        for token in self.special_strings:
            if token in context:
                raise InvalidRequest(f"context may not contain the special token {token}", field="context")
        prefill = language_header(language) if language else ""
        ids = self.tokenizer.encode(PROMPT_TEMPLATE.format(context=context, prefill=prefill),
                                    add_special_tokens=False)
        audio_at = ids.index(self.special.audio_pad)
        return ids[:audio_at], ids[audio_at + 1:]


def header_language(header: str) -> str | None:
    """The language a header names: its first line without `language `; `language None` means no speech."""
    for line in header.strip().splitlines():
        line = line.strip()
        if line:
            if line.lower() == LANGUAGE_PREFIX.strip():  # the header's first word, and nothing after it yet
                return None
            language = line[len(LANGUAGE_PREFIX):].strip() if line.lower().startswith(LANGUAGE_PREFIX) else line
            return None if language.lower() == "none" else language
    return None


def parse_transcript(raw: str, forced_language: str | None = None) -> tuple[str | None, str]:
    """Model output -> (language, text): what a TranscriptStream gives for it, all at once."""
    stream = TranscriptStream(forced_language)
    text = stream.push(raw) + stream.finish()
    return stream.language, text


class TranscriptStream:
    """Raw text deltas in, transcript text deltas out: the `language X<asr_text>` header never shows (nor does a
    header cut short by max_tokens: `language English`), repetition loops are cut to their first copy, and the
    whitespace around the text is dropped. The deltas add up to the transcript's text; `language` is the header's
    (or the forced one) once it is known."""

    def __init__(self, forced_language: str | None):
        self.language = forced_language
        self.in_text = forced_language is not None
        self.header = ""  # raw text before the tag
        self.repetitions = RepetitionFilter()
        self.started = False  # some text has been released
        self.spaces = ""  # whitespace held back: dropped if no text follows it

    def push(self, raw_delta: str) -> str:
        if not self.in_text:
            self.header += raw_delta
            # only a tag ending in this delta is new: a header that never ends costs no more per token as it grows
            if ASR_TEXT_TAG not in self.header[-(len(raw_delta) + len(ASR_TEXT_TAG) - 1):]:
                return ""
            self.header, raw_delta = self.header.split(ASR_TEXT_TAG, 1)
            self.language = header_language(self.header)
            self.in_text = True
        return self._release(self.repetitions.push(raw_delta))

    def finish(self) -> str:
        """The rest, once no more raw text will come. Output that never reached the tag is all text, as the
        reference parser reads it, unless it is the start of a header."""
        if not self.in_text:
            header, self.header, self.in_text = self.header, "", True
            if HEADER_CUT_SHORT.fullmatch(header.strip()):
                self.language = header_language(header)
                return ""
            return self._release(self.repetitions.push(header) + self.repetitions.finish(), last=True)
        return self._release(self.repetitions.finish(), last=True)

    def _release(self, text: str, last: bool = False) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        text = self.spaces + text
        body = text.rstrip()
        self.spaces = "" if last else text[len(body):]
        return body
