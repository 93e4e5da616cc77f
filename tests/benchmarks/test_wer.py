"""The WER utility: English normalization (case, punctuation, numbers) and corpus WER."""

import pytest

from qasr.benchmarks.wer import corpus_wer, normalize_english, number_words, ordinal_words


@pytest.mark.parametrize(("text", "expected"), [
    ("Set a timer for ten minutes, please.", "set a timer for ten minutes please"),
    ("  What's   the WEATHER like in New York?! ", "whats the weather like in new york"),
    ("Wake me up at 7:30.", "wake me up at seven thirty"),
    ("Wake me up at 7:05 a.m.", "wake me up at seven oh five am"),
    ("It is 9:00", "it is nine oclock"),
    ("It is nine o'clock", "it is nine oclock"),
    ("on the 21st of June and the 2nd", "on the twenty first of june and the second"),
    ("set the lights to 45%", "set the lights to forty five percent"),
    ("what is 342 plus 1,000?", "what is three hundred and forty two plus one thousand"),
    ("twenty-two degrees", "twenty two degrees"),
    ("2.5 liters", "two point five liters"),
    ("Valentine\u2019s Day", "valentines day"),
    ("", ""),
])
def test_normalize_english(text: str, expected: str) -> None:
    assert normalize_english(text) == expected


@pytest.mark.parametrize(("n", "words"), [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (99, "ninety nine"), (100, "one hundred"),
    (105, "one hundred and five"), (342, "three hundred and forty two"), (1000, "one thousand"),
    (7300, "seven thousand three hundred"), (2_000_001, "two million and one"),
])
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


@pytest.mark.parametrize(("n", "words"), [(1, "first"), (2, "second"), (3, "third"), (12, "twelfth"),
                                          (20, "twentieth"), (31, "thirty first"), (45, "forty fifth")])
def test_ordinal_words(n: int, words: str) -> None:
    assert ordinal_words(n) == words


def test_corpus_wer_counts_errors_over_all_reference_words() -> None:
    references = ["turn on the kitchen lights", "set a timer for ten minutes"]
    hypotheses = ["turn on the kitchen light", "set timer for ten minutes please"]
    # one substitution; one deletion and one insertion; eleven reference words
    assert corpus_wer(references, hypotheses) == pytest.approx(3 / 11)
    assert corpus_wer(references, references) == 0.0
    assert corpus_wer(references, ["", ""]) == 1.0


def test_corpus_wer_ignores_case_punctuation_and_digits() -> None:
    assert corpus_wer(["Wake me up at seven thirty on the twenty first."],
                      ["wake me up at 7:30 on the 21st"]) == 0.0
    assert corpus_wer(["What is forty five percent of two hundred?"], ["what is 45% of 200"]) == 0.0


def test_corpus_wer_counts_words_said_where_nothing_was_expected_as_insertions() -> None:
    assert corpus_wer(["one two", "..."], ["one two", "three"]) == pytest.approx(1 / 2)


def test_corpus_wer_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError):
        corpus_wer(["a b"], ["a", "b"])
    with pytest.raises(ValueError):
        corpus_wer(["?"], ["a"])
