"""Prompt languages, output parsing and streaming: the `language X<asr_text>` header never leaks."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME, _parse_single_output

from qasr.engine.languages import LANGUAGE_NAMES_BY_CODE, UnknownLanguageError, resolve_language
from qasr.engine.output_processor import merge_languages, piece_separator
from qasr.engine.prompt import TranscriptStream, parse_transcript
from qasr.engine.repetitions import REPEATS, RepetitionFilter, longest_run, runs_in


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


def filtered(text: str, cuts: list[int]) -> tuple[str, list[str]]:
    """The filter's output for `text` pushed in pieces of `cuts` characters, and what each push released."""
    repetitions, released, position = RepetitionFilter(), [], 0
    for size in [*cuts, len(text)]:
        released.append(repetitions.push(text[position:position + size]))
        position += size
    released.append(repetitions.finish())
    return "".join(released), released


words = st.lists(st.sampled_from(["the", "a", "timer", "is", "set", "for", "ten", "minutes", ",", "."]), min_size=12)


@settings(max_examples=200)
@given(words, st.text(alphabet="ab .", min_size=1, max_size=20), st.integers(0, 30), words,
       st.lists(st.integers(1, 9), max_size=30))
# a run of one character past REPEATS goes first, leaving a loop of "the " across it (the reference's two passes)
@example(before=["the"] * 12, pattern=" ", extra=0, after=["the"] * 12, cuts=[])
def test_a_repetition_loop_is_cut_as_the_reference_cuts_it(before: list[str], pattern: str, extra: int,
                                                           after: list[str], cuts: list[int]) -> None:
    """Speech-like text with one loop of at least REPEATS copies inside: the reference parser's reading, whatever
    pieces the text streams in."""
    text = " ".join(before) + " " + pattern * (REPEATS + extra) + " " + " ".join(after)
    expected = _parse_single_output("language X<asr_text>" + text)["transcription"]
    assert filtered(text, cuts)[0].strip() == expected


@given(st.text(alphabet="ab c.", max_size=200), st.lists(st.integers(1, 9), max_size=40),
       st.lists(st.integers(1, 9), max_size=40))
def test_the_filter_streams_what_it_would_give_whole_and_leaves_no_loop(text: str, cuts: list[int],
                                                                       other_cuts: list[int]) -> None:
    out, _ = filtered(text, cuts)
    assert out == filtered(text, other_cuts)[0] == filtered(text, [])[0]
    for size in range(1, 21):  # nothing left repeats REPEATS times in a row
        assert not any(out[i:i + size] * REPEATS == out[i:i + size * REPEATS]
                       for i in range(len(out) - size * REPEATS + 1))


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(alphabet="ab c", max_size=30),
                          st.tuples(st.text(alphabet="abc d", min_size=1, max_size=21), st.integers(1, 30)).map(
                              lambda pattern_copies: pattern_copies[0] * pattern_copies[1])), max_size=6),
       st.lists(st.integers(1, 12), max_size=60))
def test_a_push_releases_what_taking_its_characters_one_by_one_releases(parts: list[str], cuts: list[int]) -> None:
    """push() takes a piece short of any loop at once; the character-by-character rule is the reference."""
    text = "".join(parts)
    reference, out = RepetitionFilter(), []
    position = 0
    for size in [*cuts, len(text)]:
        taken: list[str] = []
        for char in text[position:position + size]:  # through the character pass, then taken one by one
            for kept in reference.character_runs.push(char):
                reference._take(kept, taken)
        out.append("".join(taken))
        position += size
    out.append(reference.finish())
    assert filtered(text, cuts)[1] == out


@given(st.text(alphabet="ab c", min_size=1, max_size=90))
def test_the_longest_run_found_by_searching_is_the_longest_counted(text: str) -> None:
    """The filter finds the longest run with str.find while every run is short, and counts each period's run where
    one may near a loop: the two agree."""
    assert longest_run(text) == max(runs_in(text))


@given(st.text(max_size=30), st.text(min_size=1, max_size=60), st.lists(st.integers(1, 7), max_size=40))
@example(language="", text="\r0", cuts=[1, 1, 1, 2, 7, 7])
@example(language="English", text="." * 512, cuts=[1] * 40)  # a loop of dots: streamed as the final text has it
def test_streamed_text_never_leaks_the_header(language: str, text: str, cuts: list[int]) -> None:
    language = language.replace("<", "")
    raw = f"language {language}<asr_text>{text}"
    stream, out, position = TranscriptStream(forced_language=None), [], 0
    for size in cuts + [len(raw)]:
        out.append(stream.push(raw[position:position + size]))
        position += size
    out.append(stream.finish())
    assert "".join(out) == parse_transcript(raw)[1] == filtered(text, [])[0].strip()
    assert "<asr_text>" not in "".join(out)


@pytest.mark.parametrize(("raw", "expected"), [
    ("language", (None, "")), ("language English", ("English", "")), ("language  None ", (None, "")),
    ("languages of the world", (None, "languages of the world")),  # not a header: the model's own text
])
def test_a_header_cut_short_by_max_tokens_is_not_text(raw: str, expected: tuple) -> None:
    assert parse_transcript(raw) == expected


def test_stream_of_untagged_output_is_released_at_the_end() -> None:
    stream = TranscriptStream(forced_language=None)
    assert stream.push("just some ") == "" and stream.push("words") == ""
    assert stream.finish() == "just some words"


def test_piece_separators_and_merged_languages() -> None:
    assert piece_separator("hello world.", "next piece") == " " and piece_separator("", "next") == ""
    assert piece_separator("ends with space ", "next") == "" and piece_separator("你好", "世界") == ""
    assert merge_languages(["English", "English", None, "Chinese", "English"]) == "English,Chinese,English"
    assert merge_languages([None, None]) is None


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, build_tokenizer):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder))


def stream_detokenizer(tokenizer):
    from qasr.engine.detokenizer import StreamDetokenizer

    return StreamDetokenizer(tokenizer)


def byte_level_detokenizer(tokenizer):
    from qasr.engine.detokenizer import ByteLevelDetokenizer, byte_level_token_bytes

    return ByteLevelDetokenizer(byte_level_token_bytes(tokenizer))


@pytest.mark.parametrize("make", [stream_detokenizer, byte_level_detokenizer])
@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, 610), max_size=40))  # ids past the vocabulary (607) decode to nothing
def test_incremental_detokenizer_adds_up_to_the_full_decode(tokenizer, make, ids: list[int]) -> None:
    detokenizer, at_once, in_threes = make(tokenizer), make(tokenizer), make(tokenizer)
    text = "".join(detokenizer.push(i) for i in ids) + detokenizer.finish()
    assert text == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    half = len(ids) // 2
    assert at_once.push_many(ids[:half]) + at_once.push_many(ids[half:]) + at_once.finish() == text
    # as a stream_interval of 3 takes them, a character's bytes split across calls included
    assert "".join(in_threes.push_many(ids[i:i + 3]) for i in range(0, len(ids), 3)) + in_threes.finish() == text


def test_byte_table_holds_each_tokens_decode_and_only_for_byte_level_bpe(tokenizer) -> None:
    from tokenizers import Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    from qasr.engine.demo import demo_model_path
    from qasr.engine.detokenizer import StreamDetokenizer, byte_level_token_bytes, detokenizer_factory
    from qasr.engine.tokenizer import load_tokenizer

    for checked in (tokenizer, load_tokenizer(demo_model_path())):
        table = byte_level_token_bytes(checked)
        assert len(table) == len(checked)
        for token_id, token_bytes in enumerate(table):
            assert token_bytes.decode(errors="replace") == checked.decode([token_id], skip_special_tokens=True)
        assert table[checked.convert_tokens_to_ids("<|im_end|>")] == b""  # special: skipped
        assert table[checked.convert_tokens_to_ids("<asr_text>")] == b"<asr_text>"  # added, not special
    other = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the fixture stays as it is
    other.decoder = decoders.Fuse()
    fused = PreTrainedTokenizerFast(tokenizer_object=other)
    assert byte_level_token_bytes(fused) is None
    assert isinstance(detokenizer_factory(fused)(), StreamDetokenizer)
