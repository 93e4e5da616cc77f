"""Sentence-sized subtitle cues from timed words: a cue ends at sentence punctuation or a pause, and before it
would pass the length limits (in seconds and characters) a subtitle reader can follow."""

from qasr.engine.outputs import Segment, Word
from qasr.engine.words import WordSpan

SENTENCE_ENDS = frozenset(".!?;。！？；…")
PAUSE_SECONDS = 0.5  # a silence this long between two words ends a cue


def sentence_cues(text: str, spans: list[WordSpan], words: list[Word], max_seconds: float,
                  max_chars: int) -> list[Segment]:
    """Cues over one piece's transcript `text`, whose words lie at `spans` and were timed as `words`. A cue's text
    is the transcript's own from its first word to its last, with the punctuation after it; a single word past
    the limits makes a cue of its own."""
    cues: list[Segment] = []
    first = 0

    def cue_text(last: int) -> str:
        return text[spans[first].start:spans[last].end] + words[last].punctuation

    for i, word in enumerate(words):
        if i > first and (word.end - words[first].start > max_seconds or len(cue_text(i)) > max_chars):
            cues.append(Segment(words[first].start, words[i - 1].end, cue_text(i - 1), words[first:i]))
            first = i
        pause = i + 1 < len(words) and words[i + 1].start - word.end >= PAUSE_SECONDS
        if i + 1 == len(words) or pause or any(c in SENTENCE_ENDS for c in word.punctuation):
            cues.append(Segment(words[first].start, word.end, cue_text(i), words[first:i + 1]))
            first = i + 1
    return cues
