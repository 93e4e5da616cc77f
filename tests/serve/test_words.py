"""Word timestamps over HTTP with a forced aligner loaded (a random one beside the demo model, whose transcripts
are real English): OpenAI verbose_json words through the official SDK, sentence-sized srt/vtt/verbose_json cues
within the cue limits, DashScope enable_words through the dashscope SDK, clear 400s, and the metrics."""

import json
import re
from pathlib import Path

import dashscope
import pytest
from aiohttp import web
from dashscope.audio.qwen_asr import QwenTranscription

from qasr.engine import AsyncEngine, EngineConfig, TranscriptionRequest
from qasr.engine.audio import load_audio
from qasr.engine.words import split_words
from qasr.serve.app import create_app
from qasr.serve.options import ServerOptions

MAX_CUE_SECONDS = 1.5
MAX_CUE_CHARS = 24
CUE_TIMING = re.compile(r"^(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)$")


@pytest.fixture(scope="module")
def aligner(shapes, tmp_path_factory: pytest.TempPathFactory, write_aligner_checkpoint) -> Path:
    return write_aligner_checkpoint(tmp_path_factory.mktemp("aligner"), shapes[1], "hf", seed=7)


@pytest.fixture(scope="module")
def engine(aligner: Path) -> AsyncEngine:
    return AsyncEngine(EngineConfig(aligner_model=str(aligner), max_num_seqs=8, max_cue_seconds=MAX_CUE_SECONDS,
                                    max_cue_chars=MAX_CUE_CHARS))


@pytest.fixture(scope="module")
def server(engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory, live_server):
    db = tmp_path_factory.mktemp("tasks") / "tasks.sqlite3"
    live = live_server(create_app(engine, ServerOptions(task_db=str(db), allow_private_urls=True)))
    yield live
    live.close()


@pytest.fixture(scope="module")
def clips(heldout) -> list[dict]:
    rows = [json.loads(line) for line in (heldout / "manifest.jsonl").read_text().splitlines()[:6]]
    rows.sort(key=lambda row: -len(row["text"]))  # the longest sentences: several cues each
    for row in rows:
        row["path"] = heldout / row["file"]
    return rows[:2]


@pytest.fixture(scope="module")
def files(clips: list[dict], live_server):
    app = web.Application()
    app.router.add_static("/audio", clips[0]["path"].parent)
    live = live_server(app)
    yield live
    live.close()


def expected_result(server, engine: AsyncEngine, path: Path):
    """What the engine itself gives with words: the HTTP answers must carry the same."""
    async def go():
        return await engine.transcribe(TranscriptionRequest(load_audio(path), word_timestamps=True))

    return server.call(go())


def check_cues(cues: list[tuple[float, float, str]]) -> None:
    assert len(cues) >= 2
    for start, end, text in cues:
        one_word = len(split_words(text)) == 1
        assert end - start <= MAX_CUE_SECONDS + 1e-6 or one_word, (start, end, text)
        assert len(text) <= MAX_CUE_CHARS or one_word, text


def parse_cues(body: str) -> list[tuple[float, float, str]]:
    cues = []
    for block in body.strip().split("\n\n"):
        lines = block.splitlines()
        timing = next((i for i, line in enumerate(lines) if CUE_TIMING.match(line)), None)
        if timing is None:
            continue
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, CUE_TIMING.match(lines[timing]).groups())
        cues.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
                     " ".join(lines[timing + 1:])))
    return cues


def test_openai_sdk_parses_words_and_sentence_cues(server, engine: AsyncEngine, clips: list[dict]) -> None:
    client = server.client()
    for clip in clips:
        expected = expected_result(server, engine, clip["path"])
        with clip["path"].open("rb") as file:
            verbose = client.audio.transcriptions.create(file=file, model="qasr-demo", response_format="verbose_json",
                                                          timestamp_granularities=["word", "segment"])
        assert verbose.text == expected.text and verbose.text
        words = verbose.words  # TranscriptionVerbose.words: TranscriptionWord(word, start, end)
        assert [w.word for w in words] == [span.text for span in split_words(verbose.text)]
        assert [(w.word, w.start, w.end) for w in words] == [(w.word, w.start, w.end) for w in expected.words]
        starts = [w.start for w in words]
        assert starts == sorted(starts) and all(w.start <= w.end for w in words)  # repaired to be monotonic
        segments = [(s.start, s.end, s.text) for s in verbose.segments]
        check_cues(segments)
        assert " ".join(text for *_, text in segments) == verbose.text
        assert segments == [(round(s.start, 3), round(s.end, 3), s.text) for s in expected.segments]
        for fmt in ("srt", "vtt"):
            with clip["path"].open("rb") as file:
                body = client.audio.transcriptions.create(file=file, model="qasr-demo", response_format=fmt)
            cues = parse_cues(body)
            assert [text for *_, text in cues] == [text for *_, text in segments], fmt
            assert cues == [(start, end, text) for start, end, text in segments], fmt
        with clip["path"].open("rb") as file:  # words only when asked for
            plain = client.audio.transcriptions.create(file=file, model="qasr-demo", response_format="verbose_json")
        assert plain.words is None and plain.text == verbose.text


def test_word_requests_that_cannot_be_served_are_clear_400s(server, clips: list[dict], http) -> None:
    import aiohttp

    def post(**fields: str) -> tuple[int, dict]:
        form = aiohttp.FormData()
        form.add_field("file", clips[0]["path"].read_bytes(), filename="clip.opus")
        for name, value in fields.items():
            form.add_field(name, value)
        status, _, body = http("POST", server.url + "/v1/audio/transcriptions", form)
        return status, json.loads(body) if body.startswith(b"{") else {}

    status, body = post(**{"timestamp_granularities[]": "word", "response_format": "json"})
    assert status == 400 and body["error"]["param"] == "timestamp_granularities[]"
    assert "verbose_json" in body["error"]["message"]
    status, body = post(**{"timestamp_granularities[]": "word", "response_format": "verbose_json",
                           "language": "ar"})
    assert status == 400 and body["error"]["param"] == "language" and "Arabic" in body["error"]["message"]
    status, body = post(**{"timestamp_granularities[]": "char", "response_format": "verbose_json"})
    assert status == 400 and "word" in body["error"]["message"]
    # cues without words in a language the aligner cannot time: one per audio piece, as without an aligner
    status, _, srt = http("POST", server.url + "/v1/audio/transcriptions", lambda: _form(clips[0], "srt", "ar"))
    assert status == 200 and len(parse_cues(srt.decode())) == 1


def _form(clip: dict, fmt: str, language: str):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", clip["path"].read_bytes(), filename="clip.opus")
    form.add_field("response_format", fmt)
    form.add_field("language", language)
    return form


def test_dashscope_sdk_result_carries_words(server, engine: AsyncEngine, files, clips: list[dict],
                                             get_json) -> None:
    dashscope.base_http_api_url = server.url + "/api/v1"
    clip = clips[0]
    expected = expected_result(server, engine, clip["path"])
    submitted = QwenTranscription.async_call(model="qasr-demo", file_url=f"{files.url}/audio/{clip['file']}",
                                             api_key="unused", enable_words=True)
    assert submitted.status_code == 200, submitted
    done = QwenTranscription.wait(submitted, api_key="unused")
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED", done
    [transcript] = get_json(done.output.result["transcription_url"])["transcripts"]
    sentences = transcript["sentences"]
    assert len(sentences) == len(expected.segments) >= 2
    for sentence, segment in zip(sentences, expected.segments):
        words = sentence["words"]
        assert [w["text"] for w in words] == [w.word for w in segment.words]
        assert sentence["begin_time"] == words[0]["begin_time"] == round(segment.start * 1000)
        assert sentence["end_time"] == words[-1]["end_time"] == round(segment.end * 1000)
        assert all(set(w) == {"begin_time", "end_time", "text", "punctuation"} for w in words)
        # the words and their punctuation spell the sentence
        assert "".join(w["text"] + w["punctuation"] for w in words) == "".join(sentence["text"].split())
    # without enable_words: the same sentences, no words
    plain = QwenTranscription.wait(QwenTranscription.async_call(
        model="qasr-demo", file_url=f"{files.url}/audio/{clip['file']}", api_key="unused"), api_key="unused")
    [plain_transcript] = get_json(plain.output.result["transcription_url"])["transcripts"]
    assert [s["text"] for s in plain_transcript["sentences"]] == [s["text"] for s in sentences]
    assert all("words" not in s for s in plain_transcript["sentences"])


def test_alignment_metrics(server, metric_values, clips: list[dict]) -> None:
    client = server.client()
    before = metric_values(server.url)
    with clips[1]["path"].open("rb") as file:
        client.audio.transcriptions.create(file=file, model="qasr-demo", response_format="srt")
    after = metric_values(server.url)
    aligned = after[("qasr_aligned_audio_seconds_total", ())] - before.get(("qasr_aligned_audio_seconds_total", ()), 0)
    assert aligned == pytest.approx(clips[1]["seconds"], abs=0.05)
    count = ("qasr_alignment_latency_seconds_count", ())
    assert after[count] - before.get(count, 0) == 1
