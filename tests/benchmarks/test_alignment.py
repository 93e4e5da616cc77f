"""`qasr bench align` end to end on the CPU with the tiny shapes: transcription alone and with word timestamps on
the same clips, in one run, with the standard JSON."""

import argparse
import json
from pathlib import Path

from qasr.benchmarks import alignment as bench
from qasr.engine.model_config import load_model_config

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def test_alignment_benchmark_times_words_and_writes_the_standard_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--clip-seconds", "3", "8", "--num-clips", "3", "--max-piece-seconds", "5",
                              "--device", "cpu", "--work-dir", str(tmp_path / "work"),
                              "--out-dir", str(tmp_path / "out")])
    assert bench.main(args) == 0
    [path] = (tmp_path / "out").glob("alignment-cpu-*.json")
    document = json.loads(path.read_text())
    assert set(document) == TOP_LEVEL_KEYS and document["benchmark"] == "alignment"
    short, long = document["results"]
    for row in (short, long):
        assert row["transcription_rtfx"] > 0 and row["with_words_rtfx"] > 0 and row["words_cost_ratio"] > 0
        assert row["words_per_clip"] >= 2  # sampled output: real words for the aligner
        assert row["aligner_passes"] >= 1
    assert long["pieces_per_pass"] > 1  # 3 clips of 8 s in pieces of at most 5 s, aligned together
    aligner = load_model_config(tmp_path / "work" / "tiny-aligner", aligner=True).aligner
    assert aligner is not None and aligner.num_classes == 5000 and aligner.segment_ms == 80
