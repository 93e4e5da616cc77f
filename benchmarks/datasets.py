"""Test sets for the serving benchmark, in the layouts people have them:

- a folder with `manifest.jsonl` (lines of `{"file", "text", "seconds"?}`, files relative to the folder): the
  committed held-out set's layout;
- LibriSpeech's: `SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt` listing `UTTERANCE-ID TEXT` lines, each utterance in
  `UTTERANCE-ID.flac` beside it (any depth: a whole `test-clean/` or one chapter);
- a folder of audio files, each with its transcript in a sidecar text file of the same name (`a.wav`, `a.txt`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm")


@dataclass(frozen=True)
class Utterance:
    path: Path
    text: str
    seconds: float | None = None  # from the manifest when it says; measured on loading otherwise


def load_dataset(folder: Path) -> list[Utterance]:
    """The utterances of `folder` in whichever layout it has, sorted by path; a ValueError names what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"dataset {folder} is not a folder")
    if (folder / "manifest.jsonl").is_file():
        return _manifest(folder)
    if transcripts := sorted(folder.rglob("*.trans.txt")):
        return _librispeech(transcripts)
    return _sidecars(folder)


def _manifest(folder: Path) -> list[Utterance]:
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{folder / 'manifest.jsonl'} lists no clips")
    return [Utterance(folder / row["file"], row["text"], row.get("seconds")) for row in rows]


def _librispeech(transcripts: list[Path]) -> list[Utterance]:
    utterances = []
    for transcript in transcripts:
        for number, line in enumerate(transcript.read_text().splitlines(), 1):
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            audio = next((transcript.parent / f"{utterance}{suffix}" for suffix in AUDIO_SUFFIXES
                          if (transcript.parent / f"{utterance}{suffix}").is_file()), None)
            if audio is None:
                raise ValueError(f"{transcript} line {number}: no audio file {utterance}.flac beside it")
            utterances.append(Utterance(audio, text.strip()))
    return sorted(utterances, key=lambda u: u.path)


def _sidecars(folder: Path) -> list[Utterance]:
    audio = sorted(path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES)
    if not audio:
        raise ValueError(f"dataset {folder} has no manifest.jsonl, no LibriSpeech *.trans.txt and no audio files")
    missing = [path.name for path in audio if not path.with_suffix(".txt").is_file()]
    if missing:
        raise ValueError(f"dataset {folder}: no sidecar transcript (.txt of the same name) for {missing[:5]}")
    return [Utterance(path, path.with_suffix(".txt").read_text().strip()) for path in audio]
