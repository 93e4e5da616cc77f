"""The host-cost-per-step benchmark end to end on the CPU with the tiny shape, so its code runs in make test."""

import argparse
import json
from pathlib import Path

from qasr.benchmarks import step as bench
from qasr.benchmarks.heldout import read_manifest
from qasr.engine.demo import demo_model_path
from qasr.engine.prompt import parse_transcript
from qasr.engine.tokenizer import load_tokenizer


def test_step_benchmark_times_each_phase_and_writes_the_standard_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--running", "3", "5", "--steps", "4", "--device", "cpu", "--work-dir",
                              str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")])
    assert bench.main(args) == 0
    [path] = (tmp_path / "out").glob("step-cpu-*.json")
    document = json.loads(path.read_text())
    assert document["benchmark"] == "step" and document["config"]["running"] == [3, 5]
    rows = document["results"]
    assert [(row["running"], row["step"]) for row in rows] == [
        (3, "decode"), (3, "decode + 1 prefill"), (5, "decode"), (5, "decode + 1 prefill")]
    for row in rows:
        assert row["decoding"] == row["running"]
        phases = [row[f"{phase}_ms"] for phase in bench.PHASES]
        assert all(ms > 0 for ms in phases) and row["host_ms"] > 0 and row["model_ms"] > 0


def test_the_host_reads_back_real_transcripts(tmp_path: Path) -> None:
    """The tokens the output processor sees are the held-out transcripts', so the text path runs on real text."""
    tokenizer = load_tokenizer(demo_model_path())
    transcripts = bench.TranscriptTokens(tokenizer)
    ids = [transcripts.next(7) for _ in range(400)]
    assert ids == [transcripts.ids[(101 * 7 + i) % len(transcripts.ids)] for i in range(400)]
    assert transcripts.next(8) != transcripts.next(7)  # each sequence at its own place
    text = parse_transcript(tokenizer.decode(ids), "English")[1]
    words = set(" ".join(row["text"] for row in read_manifest()).split())
    assert len(text.split()) > 50 and sum(word in words for word in text.split()[1:-1]) == len(text.split()) - 2
