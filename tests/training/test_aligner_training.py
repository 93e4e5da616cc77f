"""The demo aligner's data and training: libespeak-ng speech equal to the command line's with exact word times,
the committed held-out word times reproduced from their clips' manifest rows, and a few training steps exported
in the original layout and loaded by qasr."""

import ctypes
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from qasr.benchmarks.heldout import HELDOUT
from qasr.engine import ASR
from qasr.engine.model_config import load_model_config
from qasr.engine.words import split_words
from training.aligner_data import heldout_word_times, read_word_times, sentence_rows
from training.espeak import Utterance, speak_with_words
from training.train_aligner import AlignerTrainConfig, train

UTTERANCES = [
    Utterance("Hello there, set a timer for ten minutes please.", "en-us+m1", 150, 50),
    Utterance("Make it a bit warmer in the bathroom for me.", "en-us+f3", 190, 35),  # "in the": one word to espeak
    Utterance("Remind me at half past seven, okay?", "en-us+m4", 130, 70),
]


def test_the_library_speaks_as_the_command_line_does_and_times_every_word() -> None:
    for _ in range(3):  # whatever this process drew from libc's rand() (the forked speakers inherit it) changes nothing
        ctypes.CDLL(None).rand()
    spoken = list(speak_with_words(UTTERANCES * 2))
    for utterance, first, again in zip(UTTERANCES, spoken, spoken[len(UTTERANCES):]):
        wav = subprocess.run(["espeak-ng", "-v", utterance.voice, "-s", str(utterance.speed), "-p",
                              str(utterance.pitch), "--stdout", utterance.text], check=True,
                             capture_output=True).stdout
        command_line, _ = sf.read(io.BytesIO(wav), dtype="int16")
        assert np.array_equal(first.samples, command_line)  # sample for sample, in any order of utterances
        assert np.array_equal(again.samples, command_line)
        words = first.words
        assert [w.word for w in words] == [span.text for span in split_words(utterance.text)]
        known = [t for w in words for t in (w.start, w.end) if t is not None]
        assert known == sorted(known) and 0 <= known[0] and known[-1] <= len(first.samples) / first.sample_rate
        assert words[0].start is not None and words[-1].end is not None
    merged = spoken[1].words
    assert (merged[5].word, merged[5].end, merged[6].word, merged[6].start) == ("in", None, "the", None)


def test_committed_heldout_word_times_come_from_their_clips(tmp_path: Path) -> None:
    committed = read_word_times(HELDOUT)
    rows = sentence_rows(HELDOUT)
    assert set(committed) == {row["file"] for row in rows} and len(rows) == 250
    known = sum(start is not None for words in committed.values() for _, start, _ in words)
    assert known >= 0.95 * sum(len(words) for words in committed.values())
    sample = rows[:2] + rows[-2:]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sample))
    for row, record in zip(sample, heldout_word_times(tmp_path)):  # re-spoken from the manifest: the same times
        assert record["file"] == row["file"]
        assert committed[row["file"]] == [(word, None if s is None else s / 1000, None if e is None else e / 1000)
                                          for word, s, e in record["words"]]


def test_a_few_training_steps_export_an_aligner_qasr_serves(tmp_path: Path) -> None:
    config = AlignerTrainConfig(out=tmp_path / "aligner", work=tmp_path / "work", log=tmp_path / "log.jsonl",
                                clips=12, steps=3, batch_size=4, warmup=1, eval_every=0, eval_clips=4)
    evaluation = train(config)
    assert evaluation["clips"] == 250 and evaluation["start_mean_ms"] > 0  # evaluated on every held-out clip
    aligner = load_model_config(config.out, aligner=True)
    assert aligner.layout == "original" and aligner.aligner.num_classes == 400
    assert aligner.dtype == "float16" and sum(f.stat().st_size for f in config.out.iterdir()) < 15e6
    log = [json.loads(line) for line in config.log.read_text().splitlines()]
    assert any("loss" in record for record in log) and log[-1]["exported"] == str(config.out)
    # the demo model with the new aligner: word timestamps through the whole stack
    clip = HELDOUT / json.loads((HELDOUT / "manifest.jsonl").read_text().splitlines()[0])["file"]
    [result] = ASR(aligner_model=str(config.out)).transcribe(str(clip), word_timestamps=True)
    assert [w.word for w in result.words] == [span.text for span in split_words(result.text)]
