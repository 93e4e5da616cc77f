import html
import json
import math
import zlib

from qasr.engine.languages import language_code
from qasr.engine.outputs import Transcription

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def cue_text(text: str) -> str:
    """A transcript as one cue's text: no line break (a blank line would end the cue), no `-->` (a line holding
    it reads as the next cue's timing)."""
    return " ".join(text.split()).replace("-->", "->")


def to_srt(result: Transcription) -> str:
    """Numbered cues, each followed by a blank line (the last too, as SubRip writers end a file)."""
    return "".join(f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{cue_text(s.text)}\n\n"
                   for i, s in enumerate((s for s in result.segments if s.text), start=1))


def to_vtt(result: Transcription) -> str:
    """WebVTT cues; the text escaped as WebVTT requires: `&`, `<` and `>` as character references."""
    return "WEBVTT\n\n" + "\n".join(
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{html.escape(cue_text(s.text), quote=False)}\n"
        for s in result.segments if s.text)


def word_dicts(result: Transcription) -> list[dict]:
    """OpenAI's TranscriptionWord: word, start, end (seconds)."""
    return [{"word": w.word, "start": w.start, "end": w.end} for w in result.words or []]


def to_dict(result: Transcription, words: bool = False) -> dict:
    body = {
        "text": result.text,
        "language": result.language,
        "duration": round(result.duration, 3),
        "segments": [{"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                     for i, s in enumerate(result.segments)],
    }
    if words:
        body["words"] = word_dicts(result)
    return body


def to_verbose_json(result: Transcription, temperature: float = 0.0, words: bool = False) -> dict:
    """OpenAI's `verbose_json` (TranscriptionVerbose): one segment per audio piece the engine decoded, or per
    sentence-sized cue where the forced aligner timed the words; `words` with `words`.

    Real values: task, language (lower-case name, as OpenAI writes it; "unknown" if none was detected), duration,
    text, and per segment id, start, end, text, seek (the start in 10 ms mel frames, as Whisper counts),
    temperature (the request's) and compression_ratio (zlib, as Whisper computes it).
    Placeholders, because the engine does not report them: tokens ([]: the result's token ids are not split per
    segment and include the language header), avg_logprob (0.0) and no_speech_prob (0.0).
    """
    return {
        "task": "transcribe",
        "language": (result.language or "unknown").lower(),
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [{"id": i, "seek": round(s.start * 100), "start": round(s.start, 3), "end": round(s.end, 3),
                      "text": s.text, "tokens": [], "temperature": temperature, "avg_logprob": 0.0,
                      "compression_ratio": round(compression_ratio(s.text), 4), "no_speech_prob": 0.0}
                     for i, s in enumerate(result.segments)],
        "usage": duration_usage(result),
    } | ({"words": word_dicts(result)} if words else {})


def to_filetrans_transcript(channel_id: int, result: Transcription, words: bool = False) -> dict:
    """One channel of DashScope's file-transcription result document: times in milliseconds, one sentence per
    audio piece the engine decoded, or per sentence-sized cue where the forced aligner timed the words; with
    `words`, each sentence's words (begin_time, end_time, text, punctuation)."""
    language = language_code(result.language) or ""
    sentences = [{"sentence_id": i, "begin_time": round(s.start * 1000), "end_time": round(s.end * 1000),
                  "text": s.text, "language": language}
                 | ({"words": [{"begin_time": round(w.start * 1000), "end_time": round(w.end * 1000),
                                "text": w.word, "punctuation": w.punctuation} for w in s.words]} if words else {})
                 for i, s in enumerate(s for s in result.segments if s.text)]
    return {"channel_id": channel_id, "content_duration_in_milliseconds": round(result.duration * 1000),
            "text": result.text, "sentences": sentences}


def duration_usage(result: Transcription) -> dict:
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def render(result: Transcription, fmt: str, temperature: float = 0.0, words: bool = False) -> str:
    if fmt == "text":
        return result.text + "\n"
    if fmt == "srt":
        return to_srt(result)
    if fmt == "vtt":
        return to_vtt(result)
    if fmt == "json":
        return json.dumps(to_dict(result, words), ensure_ascii=False) + "\n"
    if fmt == "verbose_json":
        return json.dumps(to_verbose_json(result, temperature, words), ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
