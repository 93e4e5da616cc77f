"""The bundled demo aligner: loaded by default beside the demo model, small, in the original Qwen3-ForcedAligner
layout, and within 60 ms of the reference word times on average on the committed held-out clips of one sentence
(through qasr's aligner path)."""

import json

import torch

from qasr.benchmarks.heldout import HELDOUT
from qasr.engine import ASR
from qasr.engine.demo import DEMO_ALIGNER_DIR, demo_aligner_path
from qasr.engine.model_config import load_model_config
from qasr.engine.words import split_words
from training.evaluate_aligner import evaluate_aligner

MAX_CHECKPOINT_BYTES = 15_000_000
MAX_MEAN_ERROR_MS = 60.0  # 46 / 54 ms (start / end) on the second held-out set, 43 / 49 on the first


def test_the_demo_aligner_is_small_in_the_original_layout_and_loaded_with_the_demo_model() -> None:
    path = demo_aligner_path()
    assert path == DEMO_ALIGNER_DIR, "the demo aligner is not installed"
    assert sum(f.stat().st_size for f in path.iterdir()) <= MAX_CHECKPOINT_BYTES
    raw = json.loads((path / "config.json").read_text())
    assert "classify_num" in raw["thinker_config"] and load_model_config(path, aligner=True).layout == "original"
    assert ASR().engine.aligner_path == path
    assert ASR(aligner_model="none").engine.aligner_path is None


def test_word_times_on_the_heldout_clips_are_within_60_ms() -> None:
    torch.set_num_threads(2)
    errors = evaluate_aligner(DEMO_ALIGNER_DIR)
    assert errors.clips == 250 and errors.words > 2000
    print("\n" + errors.table())
    assert errors.start_mean_ms <= MAX_MEAN_ERROR_MS and errors.end_mean_ms <= MAX_MEAN_ERROR_MS, errors.table()


def test_the_default_engine_times_the_demo_models_words() -> None:
    row = json.loads((HELDOUT / "manifest.jsonl").read_text().splitlines()[0])
    [result] = ASR().transcribe(str(HELDOUT / row["file"]), word_timestamps=True)
    assert result.text == row["text"]
    assert [w.word for w in result.words] == [span.text for span in split_words(row["text"])]
    assert all(0 <= w.start <= w.end <= result.duration + 0.1 for w in result.words)
