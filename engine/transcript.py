from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase

ASR_TEXT_TAG = "<asr_text>"


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
            language = line[len("language "):].strip() if line.lower().startswith("language ") else line
            break
    if language is not None and language.lower() == "none":
        language = None
    return language, text.strip()


def merge_languages(languages: list[str | None]) -> str | None:
    merged: list[str] = []
    for language in languages:
        if language and (not merged or merged[-1] != language):
            merged.append(language)
    return ",".join(merged) or None


class IncrementalDetokenizer:
    """Generated ids in, text deltas out, through the tokenizers library's streaming decoder (which holds back
    the bytes of an unfinished character)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.stream = DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        chunk = self.stream.step(self.tokenizer.backend_tokenizer, token_id) or ""
        self.emitted += len(chunk)
        return chunk

    def finish(self) -> str:
        """The rest of the text, an unfinished character included, once no more ids will come."""
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        rest = full[self.emitted:]
        self.emitted = len(full)
        return rest


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


def _is_unspaced_script(char: str) -> bool:
    """Scripts written without spaces between words: CJK, kana, Thai."""
    code = ord(char)
    return (0x2E80 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F
            or 0x0E00 <= code <= 0x0E7F or 0xFF00 <= code <= 0xFFEF)


def piece_separator(left: str, right: str) -> str:
    """What goes between the texts of two consecutive audio pieces: a space, unless either side is
    empty, already spaced, or written in an unspaced script."""
    if not left or not right or left[-1].isspace() or right[0].isspace():
        return ""
    if _is_unspaced_script(left[-1]) or _is_unspaced_script(right[0]):
        return ""
    return " "


def join_texts(texts: list[str]) -> str:
    joined = ""
    for text in texts:
        joined += piece_separator(joined, text) + text
    return joined
