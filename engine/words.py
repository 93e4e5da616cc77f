"""Words for the forced aligner, both ways: a transcript split into the units the aligner times (as transformers'
`Qwen3ASRProcessor.split_words_for_alignment` splits them, with where each lies in the transcript), and the
aligner's time slots repaired into monotonic word times (as its `decode_forced_alignment` does)."""

import importlib.util
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qasr.engine.outputs import Word
from qasr.engine.request import InvalidRequest

# The languages Qwen3-ForcedAligner-0.6B times, as the processor lists them.
ALIGNER_LANGUAGES = frozenset({"Chinese", "English", "Cantonese", "French", "German", "Italian", "Japanese",
                               "Korean", "Portuguese", "Russian", "Spanish"})
# languages the reference splits with a morphological analyser, and the package it takes it from
ANALYSERS = {"Japanese": "nagisa", "Korean": "soynlp"}


@dataclass(frozen=True, slots=True)
class WordSpan:
    """One unit the aligner times: its kept characters, and the span [start, end) of the transcript they came
    from (punctuation inside a word, as in "e-mail", is dropped from `text` but lies inside the span)."""

    text: str
    start: int
    end: int


def has_analyser(language: str) -> bool:
    """The morphological analyser the reference splits `language` with is installed (or none is needed)."""
    package = ANALYSERS.get(language)
    return package is None or importlib.util.find_spec(package) is not None


def check_alignable(language: str | None) -> None:
    """An InvalidRequest for a forced language the aligner cannot time; None (detected later) passes."""
    if language is None:
        return
    if language not in ALIGNER_LANGUAGES:
        raise InvalidRequest(f"word timestamps are not available for {language}; the forced aligner supports "
                             f"{', '.join(sorted(ALIGNER_LANGUAGES))}", field="language")
    if not has_analyser(language):
        raise InvalidRequest(f"word timestamps for {language} split words with the {ANALYSERS[language]} package, "
                             f"which this server does not have (pip install {ANALYSERS[language]})", field="language")


def can_align(language: str | None) -> bool:
    return language in ALIGNER_LANGUAGES and has_analyser(language)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def is_kept(char: str) -> bool:
    """Letters, numbers, apostrophes and CJK ideographs make words; everything else is dropped."""
    return char == "'" or unicodedata.category(char)[0] in "LN" or is_cjk(char)


def split_words(text: str, language: str | None = None) -> list[WordSpan]:
    """Japanese and Korean by their morphological analysers (nagisa, soynlp), as the reference splits them;
    everything else: CJK ideographs one by one, other scripts at whitespace. Only kept characters in each word."""
    analyse = _ANALYSE.get(language or "")
    if analyse is not None:
        return locate(text, [cleaned for token in analyse(text) if (cleaned := "".join(filter(is_kept, token)))])
    words: list[WordSpan] = []
    kept: list[str] = []
    start = end = 0

    def flush() -> None:
        if kept:
            words.append(WordSpan("".join(kept), start, end))
            kept.clear()

    for i, char in enumerate(text):
        if is_cjk(char):
            flush()
            words.append(WordSpan(char, i, i + 1))
        elif char.isspace():
            flush()
        elif is_kept(char):
            if not kept:
                start = i
            kept.append(char)
            end = i + 1
    flush()
    return words


def locate(text: str, words: list[str]) -> list[WordSpan]:
    """Each word's span in `text`: its characters found in order, from where the previous word ended."""
    spans, cursor = [], 0
    for word in words:
        start = end = None
        for char in word:
            found = text.find(char, cursor)
            if found < 0:
                raise ValueError(f"{word!r} is not in the text from character {cursor} on")
            start = found if start is None else start
            end = cursor = found + 1
        spans.append(WordSpan(word, start or 0, end or 0))
    return spans


def _nagisa_words(text: str) -> list[str]:
    import nagisa

    return list(nagisa.tagging(text.strip()).words)


def _soynlp_words(text: str) -> list[str]:
    from soynlp.tokenizer import LTokenizer

    return list(LTokenizer().tokenize(text.strip()))


_ANALYSE: dict[str, Callable[[str], list[str]]] = {"Japanese": _nagisa_words, "Korean": _soynlp_words}


def repair_timestamps(raw: list[float]) -> list[float]:
    """Monotonic times from the aligner's raw ones, as the reference repairs them: the longest non-decreasing
    subsequence (the first found, by its O(n^2) scan) stays; a run of at most two others snaps to the nearer kept
    neighbour (the left one on a tie), a longer run is spaced evenly between its kept neighbours (or copies the
    one it has)."""
    n = len(raw)
    if n == 0:
        return []
    length, parent = [1] * n, [-1] * n
    for i in range(1, n):
        for j in range(i):
            if raw[j] <= raw[i] and length[j] + 1 > length[i]:
                length[i], parent[i] = length[j] + 1, j
    kept = [False] * n
    i = length.index(max(length))
    while i != -1:
        kept[i], i = True, parent[i]

    fixed = list(raw)
    i = 0
    while i < n:
        if kept[i]:
            i += 1
            continue
        j = i
        while j < n and not kept[j]:
            j += 1
        left = next((fixed[k] for k in range(i - 1, -1, -1) if kept[k]), None)
        right = next((fixed[k] for k in range(j, n) if kept[k]), None)
        for k in range(i, j):
            if left is None or right is None:
                fixed[k] = right if left is None else left
            elif j - i <= 2:
                fixed[k] = left if k - (i - 1) <= j - k else right
            else:
                fixed[k] = left + (right - left) / (j - i + 1) * (k - i + 1)
        i = j
    return [float(int(v)) for v in fixed]  # the reference truncates to whole milliseconds


def timed_words(text: str, spans: list[WordSpan], classes: np.ndarray, segment_ms: float,
                offset: float) -> list[Word]:
    """The aligner's time classes at each word's two `<timestamp>` slots -> words with repaired times (in
    float32 milliseconds first, as the reference computes them), shifted by the piece's `offset` seconds."""
    raw = (np.asarray(classes, dtype=np.float32) * np.float32(segment_ms)).tolist()
    fixed = repair_timestamps(raw)
    words = []
    for i, span in enumerate(spans):
        following = spans[i + 1].start if i + 1 < len(spans) else len(text)
        punctuation = "".join(text[span.end:following].split())
        words.append(Word(span.text, round(offset + round(fixed[2 * i] / 1000.0, 3), 3),
                               round(offset + round(fixed[2 * i + 1] / 1000.0, 3), 3), punctuation))
    return words
