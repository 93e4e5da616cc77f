"""The forced aligner against transformers: Qwen3ASRForTokenClassification with the processor's
prepare_forced_aligner_inputs and decode_forced_alignment, on random aligner checkpoints in both layouts.
Prompts, word lists, class logits (1e-4 relative) and the repaired word times (exactly), alone, batched, and
inside the engine beside transcription traffic."""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.engine.aligner_runner import load_aligner
from qasr.engine.languages import resolve_language
from qasr.engine.request import InvalidRequest, TranscriptionRequest
from qasr.engine.splitting import split_audio
from qasr.engine.words import check_alignable, repair_timestamps, split_words

TEXTS = [
    ("English", "Set a timer for ten minutes, and don't forget the e-mail to Anna!"),
    ("German", "Große Grüße aus München: über 20 Äpfel, bitte."),
    ("Chinese", "今天天气很好，我们去公园散步吧。OK"),
]
CLIP_SECONDS = [1.2, 4.0, 6.5]
FIND_SPEC = importlib.util.find_spec


@pytest.fixture(scope="module")
def aligners(shapes, checkpoint_root: Path, write_aligner_checkpoint) -> dict[str, Path]:
    return {layout: write_aligner_checkpoint(checkpoint_root / f"aligner-{layout}", shapes[1], layout, seed=3)
            for layout in ("hf", "original")}


class Reference:
    """transformers' aligner, one clip at a time, float32, CPU."""

    def __init__(self, hf_checkpoint: Path):
        from transformers import Qwen3ASRForTokenClassification, Qwen3ASRProcessor

        self.processor = Qwen3ASRProcessor.from_pretrained(hf_checkpoint)
        self.model = Qwen3ASRForTokenClassification.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()
        self.timestamp_token_id = self.model.config.timestamp_token_id

    @torch.inference_mode()
    def align(self, clip: np.ndarray, text: str, language: str) -> tuple[list[int], list[str], torch.Tensor, list]:
        inputs, word_lists = self.processor.prepare_forced_aligner_inputs(audio=clip, transcript=text,
                                                                          language=language)
        logits = self.model(**inputs).logits
        ids = inputs["input_ids"]
        words = self.processor.decode_forced_alignment(logits, ids, word_lists, self.timestamp_token_id)[0]
        return (ids[0].tolist(), word_lists[0], logits[0][ids[0] == self.timestamp_token_id].float(),
                [(w["text"], w["start_time"], w["end_time"]) for w in words])


@pytest.fixture(scope="module")
def reference(aligners: dict[str, Path]) -> Reference:
    return Reference(aligners["hf"])


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_words_times_and_logits_match_transformers_alone_and_batched(layout: str, aligners: dict[str, Path],
                                                                     reference: Reference, speech_like) -> None:
    processor, runner = load_aligner(aligners[layout])
    cases = [(language, text, speech_like(seconds, seed=i)) for i, seconds in enumerate(CLIP_SECONDS)
             for language, text in TEXTS]
    expected = [reference.align(clip, text, language) for language, text, clip in cases]
    pieces = [processor.job(text, clip, offset=0.0) for _, text, clip in cases]
    waveforms = {piece.job.job_id: clip for piece, (_, _, clip) in zip(pieces, cases)}
    batched = runner.forward([piece.job for piece in pieces], waveforms)
    classes = runner.align([piece.job for piece in pieces], waveforms)
    for piece, (language, _, clip), (ids, word_list, logits, words), together in zip(pieces, cases, expected,
                                                                                      batched):
        where = f"{layout} {language} {len(clip) / 16000:.1f}s"
        assert piece.job.prompt_token_ids == ids, where
        assert [span.text for span in piece.spans] == word_list, where
        [alone] = runner.forward([piece.job], {piece.job.job_id: clip})
        assert relative_error(alone, logits) < 1e-4, where
        assert relative_error(together, logits) < 1e-4, where
        ours = processor.words(piece, classes[piece.job.job_id])
        assert [(w.word, w.start, w.end) for w in ours] == words, where
    # random weights still spread the slots: the times are not all one value
    assert len({w[1] for _, _, _, words in expected for w in words}) > 5


def test_words_split_as_the_processor_splits_them(reference: Reference) -> None:
    texts = ["  Hello,   world!! ", "it's 5 o'clock — rock'n'roll?", "中文和English混合。", "e-mail: a.b@c.de",
             "...", "", "naïve café ÜBER", "数字123与標點！", "tab\tand\nnewline"]
    for text in texts:
        spans = split_words(text)
        assert [s.text for s in spans] == reference.processor.split_words_for_alignment(text, "English"), text
        for span in spans:  # each word's characters lie, in order, inside its span of the text
            inside = iter(text[span.start:span.end])
            assert all(char in inside for char in span.text), (text, span)


def test_timestamp_repair_matches_the_processor() -> None:
    from transformers.models.qwen3_asr.processing_qwen3_asr import _fix_timestamps

    rng = np.random.default_rng(0)
    cases = [[0, 80, 160, 240], [400, 80, 160, 240, 320], [0, 800, 80, 160, 960, 240, 40, 1200],
             [500, 400, 300, 200, 100], [0, 0, 0], [100]]
    cases += [list(rng.integers(0, 40, size=n) * 80) for n in (2, 5, 9, 16, 31) for _ in range(8)]
    for raw in cases:
        values = np.asarray(raw, dtype=np.float32)
        assert repair_timestamps(values.tolist()) == [float(v) for v in _fix_timestamps(values)], raw


@pytest.fixture(scope="module")
def asr_checkpoint(shapes, checkpoint_root: Path, write_checkpoint) -> Path:
    return write_checkpoint(checkpoint_root / "aligner-asr", shapes[0], "hf", seed=5)


@pytest.mark.parametrize("stream_interval", [1, 3])
def test_engine_times_words_beside_transcription_traffic(stream_interval: int, asr_checkpoint: Path,
                                                         aligners: dict[str, Path], reference: Reference,
                                                         speech_like) -> None:
    """Requests with and without words, one split into pieces, in the same steps: each piece's words are the
    reference's for that piece's transcript and audio, shifted by the piece's start. A quiet one (stream=False)
    says nothing until its words are in. Text made every third token times the same words."""
    asr = ASR(str(asr_checkpoint), aligner_model=str(aligners["original"]), max_piece_seconds=2.0,
              max_cue_seconds=1.0, stream_interval=stream_interval)
    engine = asr.engine
    params = SamplingParams(max_tokens=12)
    clips = [speech_like(seconds, seed=10 + i) for i, seconds in enumerate([5.5, 1.5, 3.0, 2.5])]
    wants_words = [True, False, True, True]
    ids = [engine.add_request(TranscriptionRequest(clip, language="en", sampling_params=params,
                                                   word_timestamps=words, stream=k != 2))
           for k, (clip, words) in enumerate(zip(clips, wants_words))]
    results, num_outputs = {}, dict.fromkeys(ids, 0)
    aligned_batches = []
    original_align = engine.core.aligner.align

    def record(jobs, waveforms):
        aligned_batches.append(len(jobs))
        return original_align(jobs, waveforms)

    engine.core.aligner.align = record
    while engine.has_unfinished:
        for output in engine.step():
            num_outputs[output.request_id] += 1
            if output.finished:
                results[output.request_id] = output.result
    assert max(aligned_batches) > 1, "the aligner never batched two pieces"
    assert num_outputs[ids[2]] == 1 and num_outputs[ids[3]] > 1
    checked = 0
    for request_id, clip, words in zip(ids, clips, wants_words):
        result = results[request_id]
        if not words:
            assert result.words is None
            continue
        pieces = split_audio(clip, 2.0, 16000)
        # the same greedy transcript without words: one segment per piece, with that piece's text
        [plain] = asr.transcribe(clip, language="en", sampling_params=params)
        assert plain.text == result.text and len(plain.segments) == len(pieces)
        expected = []
        for piece, segment_text in zip(pieces, [segment.text for segment in plain.segments]):
            if split_words(segment_text):
                *_, piece_words = reference.align(piece.samples, segment_text, "English")
                expected += [(w, round(piece.start + s, 3), round(piece.start + e, 3)) for w, s, e in piece_words]
        assert [(w.word, w.start, w.end) for w in result.words] == expected
        checked += len(expected)
        for cue in result.segments:  # sentence-sized cues within the limits (a single word may run over)
            assert cue.end - cue.start <= 1.0 or len(cue.text.split()) == 1
        assert result.metrics.alignment_time is not None and result.metrics.aligned_seconds > 0
    assert checked >= 5


def test_word_requests_need_an_aligner_and_a_language_it_knows(asr_checkpoint: Path, aligners: dict[str, Path],
                                                              speech_like) -> None:
    clip = speech_like(1.0, seed=1)
    plain = ASR(str(asr_checkpoint))
    with pytest.raises(InvalidRequest, match="forced aligner"):
        plain.engine.add_request(TranscriptionRequest(clip, word_timestamps=True))
    with_aligner = ASR(str(asr_checkpoint), aligner_model=str(aligners["hf"]))
    with pytest.raises(InvalidRequest, match="not available for Arabic"):
        with_aligner.engine.add_request(TranscriptionRequest(clip, language="ar", word_timestamps=True))
    with pytest.raises(ValueError, match="forced aligner checkpoint, where a speech recognition model"):
        ASR(str(aligners["hf"]))
    with pytest.raises(ValueError, match="speech recognition model checkpoint, where a forced aligner"):
        ASR(str(asr_checkpoint), aligner_model=str(asr_checkpoint))


@pytest.mark.gpu
def test_the_aligner_on_a_gpu_in_bf16_within_its_profiled_memory(asr_checkpoint: Path, aligners: dict[str, Path],
                                                                  speech_like) -> None:
    """The KV pool leaves the aligner's profiled peak free; a real batched pass stays within it, and the compiled
    kernels in bf16 time (nearly) the words fp32 times on the CPU."""
    asr = ASR(str(asr_checkpoint), aligner_model=str(aligners["hf"]), dtype="bfloat16", max_num_batched_tokens=2048)
    runner = asr.engine.core.aligner
    profiled = runner.profile_peak_bytes(2048, 30.0)
    assert profiled > 0
    processor = asr.engine.alignment_processor
    clips = [speech_like(seconds, seed=i) for i, seconds in enumerate([6.0, 9.0, 4.5])]
    pieces = [processor.job(text, clip, 0.0) for (_, text), clip in zip(TEXTS, clips)]
    waveforms = {piece.job.job_id: clip for piece, clip in zip(pieces, clips)}
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    gpu = runner.align([piece.job for piece in pieces], waveforms)
    assert torch.cuda.max_memory_allocated() - baseline <= profiled
    _, cpu_runner = load_aligner(aligners["hf"])
    cpu = cpu_runner.align([piece.job for piece in pieces], waveforms)
    slots = np.concatenate([gpu[p.job.job_id] for p in pieces]), np.concatenate([cpu[p.job.job_id] for p in pieces])
    assert np.mean(np.abs(slots[0] - slots[1]) <= 1) >= 0.9  # bf16 rounding may move a near tie by a slot


def test_japanese_and_korean_split_with_the_references_analysers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference splits Japanese with nagisa and Korean with soynlp; without them such a request is a 400
    naming the package, with them their tokens (punctuation dropped) are the words, located in the text."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name in ("nagisa", "soynlp")
                        else FIND_SPEC(name, *args))
    for language in ("ja", "ko"):
        with pytest.raises(InvalidRequest, match="pip install (nagisa|soynlp)"):
            check_alignable(resolve_language(language))
    monkeypatch.undo()

    nagisa = types.ModuleType("nagisa")
    nagisa.tagging = lambda text: types.SimpleNamespace(words=["今日", "は", "、", "いい", "天気", "です", "ね", "！"])
    soynlp = types.ModuleType("soynlp")
    tokenizer = types.ModuleType("soynlp.tokenizer")
    tokenizer.LTokenizer = lambda: types.SimpleNamespace(tokenize=lambda text: ["오늘은", "날씨가", "좋네요."])
    monkeypatch.setitem(sys.modules, "nagisa", nagisa)
    monkeypatch.setitem(sys.modules, "soynlp", soynlp)
    monkeypatch.setitem(sys.modules, "soynlp.tokenizer", tokenizer)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object() if name in ("nagisa", "soynlp")
                        else FIND_SPEC(name, *args))
    check_alignable(resolve_language("ja"))
    text = "今日は、いい天気ですね！"
    spans = split_words(text, "Japanese")
    assert [s.text for s in spans] == ["今日", "は", "いい", "天気", "です", "ね"]
    assert [text[s.start:s.end] for s in spans] == ["今日", "は", "いい", "天気", "です", "ね"]
    text = "오늘은 날씨가 좋네요."
    assert [(s.text, text[s.start:s.end]) for s in split_words(text, "Korean")] == [
        ("오늘은", "오늘은"), ("날씨가", "날씨가"), ("좋네요", "좋네요")]
