import json

from engine.outputs import Transcription


def _timestamp(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(result: Transcription) -> str:
    blocks = [f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
              for i, s in enumerate((s for s in result.segments if s.text), start=1)]
    return "\n".join(blocks)


def to_vtt(result: Transcription) -> str:
    blocks = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n"
              for s in result.segments if s.text]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_dict(result: Transcription) -> dict:
    return {
        "text": result.text,
        "language": result.language,
        "duration": round(result.duration, 3),
        "segments": [{"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                     for i, s in enumerate(result.segments)],
    }


def render(result: Transcription, fmt: str) -> str:
    if fmt == "text":
        return result.text + "\n"
    if fmt == "srt":
        return to_srt(result)
    if fmt == "vtt":
        return to_vtt(result)
    if fmt == "json":
        return json.dumps(to_dict(result), ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose json, text, srt or vtt")
