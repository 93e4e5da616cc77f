"""The serving benchmark's test sets: a manifest folder, a LibriSpeech-style tree and audio files with sidecar
transcripts all load; a broken layout is a ValueError that says what is missing."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qasr.benchmarks.datasets import load_dataset
from qasr.benchmarks.heldout import HELDOUT


def tone(path: Path, seconds: float, fmt: str = "FLAC") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), 16000, format=fmt)


def test_a_librispeech_tree_loads(tmp_path: Path) -> None:
    root = tmp_path / "test-clean"
    for speaker, chapter, count in (("1089", "134686", 2), ("121", "121726", 1)):
        folder = root / speaker / chapter
        lines = []
        for i in range(count):
            utterance = f"{speaker}-{chapter}-{i:04d}"
            tone(folder / f"{utterance}.flac", 0.5 + i)
            lines.append(f"{utterance} HE HOPED THERE WOULD BE STEW FOR DINNER {i}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    utterances = load_dataset(root)
    assert [u.path.name for u in utterances] == ["1089-134686-0000.flac", "1089-134686-0001.flac",
                                                 "121-121726-0000.flac"]
    assert utterances[1].text == "HE HOPED THERE WOULD BE STEW FOR DINNER 1" and utterances[1].seconds is None
    assert load_dataset(root / "121" / "121726") == utterances[2:]  # one chapter alone

    (root / "121" / "121726" / "121-121726-0000.flac").unlink()
    with pytest.raises(ValueError, match="121-121726-0000.flac"):
        load_dataset(root)


def test_audio_files_with_sidecar_transcripts_load(tmp_path: Path) -> None:
    tone(tmp_path / "b.wav", 1.0, "WAV")
    tone(tmp_path / "a.flac", 0.5)
    (tmp_path / "a.txt").write_text("turn the lights off\n")
    (tmp_path / "b.txt").write_text("set a timer")
    assert [(u.path.name, u.text) for u in load_dataset(tmp_path)] == [("a.flac", "turn the lights off"),
                                                                       ("b.wav", "set a timer")]
    (tmp_path / "b.txt").unlink()
    with pytest.raises(ValueError, match=r"b\.wav"):
        load_dataset(tmp_path)


def test_the_heldout_manifest_loads_and_an_empty_folder_does_not(tmp_path: Path) -> None:
    utterances = load_dataset(HELDOUT)
    assert len(utterances) == 380 and all(u.path.is_file() and u.seconds for u in utterances)
    assert sum(not u.text for u in utterances) == 100  # the clips of silence and noise
    with pytest.raises(ValueError, match="no manifest.jsonl"):
        load_dataset(tmp_path)
