"""Prompt languages, output parsing and streaming: the `language X<asr_text>` header never leaks."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME, _parse_single_output

from qasr.engine.languages import LANGUAGE_NAMES_BY_CODE, UnknownLanguageError, resolve_language
from qasr.engine.output_processor import join_texts, merge_languages
from qasr.engine.prompt import TranscriptStream, fix_repetitions, parse_transcript


def test_the_thirty_languages_match_transformers() -> None:
    assert LANGUAGE_NAMES_BY_CODE == LANGUAGE_CODE_TO_NAME
    assert len(LANGUAGE_NAMES_BY_CODE) == 30


@pytest.mark.parametrize(("given_name", "expected"), [
    ("en", "English"), ("EN", "English"), ("english", "English"), ("English", "English"), ("en-US", "English"),
    ("zh", "Chinese"), ("yue", "Cantonese"), ("fil", "Filipino"), ("pt_BR", "Portuguese"), (None, None), ("", None),
])
def test_resolve_language(given_name, expected) -> None:
    assert resolve_language(given_name) == expected


def test_unknown_language_is_a_clear_error() -> None:
    with pytest.raises(UnknownLanguageError, match="unsupported language 'Klingon'.*English \\(en\\)"):
        resolve_language("Klingon")


@pytest.mark.parametrize("raw", [
    "language English<asr_text>Today we release a model.",
    "language None<asr_text>",
    "language Chinese<asr_text>你好，世界",
    "no tag at all, just text",
    "  language German\n<asr_text>  Guten Tag  ",
    "language English<asr_text>" + "ha" * 40,
    "language English<asr_text>" + "a" * 30 + " done",
    "",
])
def test_parse_matches_the_reference_parser(raw: str) -> None:
    expected = _parse_single_output(raw)
    assert parse_transcript(raw) == (expected["language"], expected["transcription"])


def test_forced_language_output_is_all_text() -> None:
    assert parse_transcript("hello there", forced_language="English") == ("English", "hello there")


@given(st.text(alphabet="ab c.", max_size=80))
def test_fix_repetitions_matches_the_reference(text: str) -> None:
    expected = _parse_single_output("language X<asr_text>" + text)["transcription"]
    assert fix_repetitions(text).strip() == expected


@given(st.text(max_size=30), st.text(min_size=1, max_size=60), st.lists(st.integers(1, 7), max_size=40))
@example(language="", text="\r0", cuts=[1, 1, 1, 2, 7, 7])
def test_streamed_text_never_leaks_the_header(language: str, text: str, cuts: list[int]) -> None:
    language = language.replace("<", "")
    raw = f"language {language}<asr_text>{text}"
    stream, out, position = TranscriptStream(forced_language=None), [], 0
    for size in cuts + [len(raw)]:
        out.append(stream.push(raw[position:position + size]))
        position += size
    out.append(stream.finish())
    assert "".join(out) == text.strip()


def test_stream_of_untagged_output_is_released_at_the_end() -> None:
    stream = TranscriptStream(forced_language=None)
    assert stream.push("just some ") == "" and stream.push("words") == ""
    assert stream.finish() == "just some words"


def test_join_and_merge() -> None:
    assert join_texts(["hello world.", "next piece", "", "end"]) == "hello world. next piece end"
    assert join_texts(["你好", "世界"]) == "你好世界"
    assert merge_languages(["English", "English", None, "Chinese", "English"]) == "English,Chinese,English"
    assert merge_languages([None, None]) is None


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, build_tokenizer):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 606), max_size=40))
def test_incremental_detokenizer_adds_up_to_the_full_decode(tokenizer, ids: list[int]) -> None:
    from qasr.engine.detokenizer import IncrementalDetokenizer

    detokenizer = IncrementalDetokenizer(tokenizer)
    text = "".join(detokenizer.push(i) for i in ids) + detokenizer.finish()
    assert text == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
