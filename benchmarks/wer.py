"""Word error rate with an English text normalizer: case, punctuation and numbers written in digits.

`normalize_english("Wake me at 7:30, on the 21st!") == "wake me at seven thirty on the twenty first"`, so a
transcript that writes digits scores like one that writes words (the demo model always writes words).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

try:
    import jiwer
except ImportError as error:  # an optional dependency: the base install serves, it does not score
    raise ImportError("word error rates need jiwer: pip install 'qasr[bench]'") from error

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> str:
    """Cardinal in words, British style: 342 -> "three hundred and forty two"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for value, name in SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = f"{number_words(head)} {name}"
            if rest:
                words += (" and " if rest < 100 else " ") + number_words(rest)
            return words
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    if last in ORDINALS:
        words[-1] = ORDINALS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def time_words(hours: int, minutes: int) -> str:
    if minutes == 0:
        return f"{number_words(hours)} o'clock"
    return f"{number_words(hours)} {'oh ' if minutes < 10 else ''}{number_words(minutes)}"


def _digits_to_words(text: str) -> str:
    text = re.sub(r"\b(\d{1,2}):(\d{2})\b", lambda m: " " + time_words(int(m[1]), int(m[2])) + " ", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: " " + ordinal_words(int(m[1])) + " ", text)
    text = re.sub(r"\b(\d+)\.(\d+)\b",
                  lambda m: f" {number_words(int(m[1]))} point {' '.join(ONES[int(d)] for d in m[2])} ", text)
    text = re.sub(r"(\d+)\s*%", lambda m: f" {number_words(int(m[1]))} percent ", text)
    return re.sub(r"\d+", lambda m: " " + number_words(int(m[0])) + " ", text)


def normalize_english(text: str) -> str:
    """Lowercase words only: digits spelled out, a.m./p.m. joined, apostrophes dropped, punctuation removed."""
    text = _digits_to_words(text.lower())
    text = re.sub(r"\b([ap])\.\s?m\.?", r"\1m", text)
    text = text.replace("&", " and ").replace("'", "").replace("\u2019", "")
    text = re.sub(r"[^a-z]+", " ", text)
    return " ".join(text.split())


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word errors over all utterances divided by the number of reference words, after normalization."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_english(r) for r in references]
    hyps = [normalize_english(h) for h in hypotheses]
    if not any(refs):
        raise ValueError("the references contain no words")
    kept = [(r, h) for r, h in zip(refs, hyps) if r]
    # jiwer refuses empty references; an utterance with no reference words can only add insertions
    insertions = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    out = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    words = out.hits + out.substitutions + out.deletions
    return (out.substitutions + out.deletions + out.insertions + insertions) / words
