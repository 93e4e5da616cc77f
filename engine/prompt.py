"""The Qwen3-ASR prompt format, both ways: the prompt's token ids (system context, audio placeholders, an optional
forced-language prefill), and the model's answer `language X<asr_text>text` parsed back into language and text,
whole or as a stream."""

from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from qasr.engine.languages import Language
from qasr.engine.tokenizer import SpecialTokens

PROMPT_TEMPLATE = (
    "<|im_start|>system\n{context}<|im_end|>\n"
    "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
    "<|im_start|>assistant\n{prefill}"
)
LANGUAGE_PREFIX = "language "
ASR_TEXT_TAG = "<asr_text>"

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
                raise ValueError(f"context may not contain the special token {token}")
        prefill = language_header(language) if language else ""
        ids = self.tokenizer.encode(PROMPT_TEMPLATE.format(context=context, prefill=prefill),
                                    add_special_tokens=False)
        audio_at = ids.index(self.special.audio_pad)
        return ids[:audio_at], ids[audio_at + 1:]


def fix_repetitions(text: str, threshold: int = 20, max_pattern: int = 20) -> str:
    """Collapse a character repeated more than `threshold` times, and a pattern of up to `max_pattern`
    characters repeated `threshold` or more times, to one copy (what the reference parser does)."""
    out, i = [], 0
    while i < len(text):
        run = 1
        while i + run < len(text) and text[i + run] == text[i]:
            run += 1
        out.append(text[i] if run > threshold else text[i:i + run])
        i += run
    text = "".join(out)
    out, i = [], 0
    while i <= len(text) - 2 * threshold:
        for size in range(1, max_pattern + 1):
            if i + size * threshold > len(text):
                break
            pattern = text[i:i + size]
            if all(text[i + r * size:i + (r + 1) * size] == pattern for r in range(1, threshold)):
                end = i + threshold * size
                while text[end:end + size] == pattern:
                    end += size
                return "".join(out) + pattern + fix_repetitions(text[end:], threshold, max_pattern)
        out.append(text[i])
        i += 1
    return "".join(out) + text[i:]


def parse_transcript(raw: str, forced_language: str | None = None) -> tuple[str | None, str]:
    """Model output -> (language, text). `language X<asr_text>text`; `language None` means no speech."""
    raw = fix_repetitions(raw.strip())
    if forced_language:
        return forced_language, raw.strip()
    if ASR_TEXT_TAG not in raw:
        return None, raw.strip()
    meta, text = raw.split(ASR_TEXT_TAG, 1)
    language = None
    for line in meta.strip().splitlines():
        line = line.strip()
        if line:
            language = line[len(LANGUAGE_PREFIX):].strip() if line.lower().startswith(LANGUAGE_PREFIX) else line
            break
    if language is not None and language.lower() == "none":
        language = None
    return language, text.strip()


class TranscriptStream:
    """Raw text deltas in, transcript text deltas out: the `language X<asr_text>` header never leaks, and the
    deltas add up to the stripped text that parse_transcript returns."""

    def __init__(self, forced_language: str | None):
        self.in_text = forced_language is not None
        self.started = False
        self.pending = ""

    def push(self, raw_delta: str) -> str:
        self.pending += raw_delta
        if not self.in_text:
            if ASR_TEXT_TAG not in self.pending:
                return ""
            self.pending = self.pending.split(ASR_TEXT_TAG, 1)[1]
            self.in_text = True
        if not self.started:
            self.pending = self.pending.lstrip()
            self.started = bool(self.pending)
        # trailing whitespace is held back: it is stripped if nothing follows it
        body = self.pending.rstrip()
        out, self.pending = body, self.pending[len(body):]
        return out

    def finish(self) -> str:
        """Anything held back that belongs to the text (a raw output with no header is all text)."""
        out = self.pending.strip() if not self.in_text else ""
        self.pending = ""
        return out
