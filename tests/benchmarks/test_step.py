"""The host-cost-per-step benchmark end to end on the CPU with the tiny shape, so its code runs in make test."""

import argparse
import json
from pathlib import Path

import torch

from qasr.benchmarks import step as bench
from qasr.benchmarks.heldout import read_manifest
from qasr.benchmarks.random_checkpoint import write_random_checkpoint
from qasr.engine import sampler
from qasr.engine.config import EngineConfig
from qasr.engine.llm_engine import LLMEngine
from qasr.engine.prompt import parse_transcript
from qasr.engine.tokenizer import load_tokenizer

TRANSCRIPT_RESULT = bench.TranscriptResult.result


def test_step_benchmark_times_each_phase_and_writes_the_standard_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--running", "3", "5", "--steps", "4", "--device", "cpu", "--temperature", "0.8",
                              "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")])
    assert bench.main(args) == 0
    [path] = (tmp_path / "out").glob("step-cpu-*.json")
    document = json.loads(path.read_text())
    assert document["benchmark"] == "step" and document["config"]["running"] == [3, 5]
    assert document["config"]["stream_interval"] == 1 and document["config"]["temperature"] == 0.8
    assert bench.new_request(0, stream=False, temperature=0.8).sampling_params.temperature == 0.8
    rows = document["results"]
    assert [(row["running"], row["text"], row["step"]) for row in rows] == [
        (running, text, step) for running in (3, 5) for text in ("deltas", "final")
        for step in ("decode", "decode + 1 prefill")]
    for row in rows:
        assert row["decoding"] == row["running"]
        ended = row["step"] != "decode"  # a mixed step ends a request: its abort is timed
        phases = [row[f"{phase}_ms"] for phase in bench.PHASES if ended or phase != "abort"]
        assert all(ms > 0 for ms in phases) and row["host_ms"] > 0 and row["model_ms"] > 0
        assert row["mean_host_ms"] > 0
        assert ended or row["abort_ms"] == 0
        # the encoder runs for the request each mixed step takes in, and its time is part of the model's
        assert (0 < row["encode_ms"] < row["model_ms"]) if ended else row["encode_ms"] == 0
        assert row["other_ms"] > 0  # the encoder's time is not also taken out of the rest of the step


def test_host_only_leaves_the_device_work_out_and_puts_everything_back(tmp_path: Path) -> None:
    """--host-only: the forward's stand-ins return at once, the steps still run (the sequences keep decoding, the
    text comes from the transcripts), and the engine's own methods are back afterwards."""
    checkpoint = write_random_checkpoint(tmp_path / "tiny", "tiny", torch.float32, device="cpu")
    config = EngineConfig(model=str(checkpoint), device="cpu")
    real = bench.measure(config, running=4, steps=6, texts=["final"])
    alone = bench.measure(config, running=4, steps=6, texts=["final"], host_only=True)
    for with_model, host_only in zip(real, alone):
        assert host_only["decoding"] == with_model["decoding"] == 4
        assert host_only["schedule_ms"] > 0 and host_only["prepare_ms"] > 0 and host_only["update_ms"] > 0
        assert host_only["model_ms"] < with_model["model_ms"] / 3  # zeros instead of the tiny model's forward
    engine = LLMEngine(config)
    runner = engine.core.runner
    before = {name: getattr(runner.model, name) for name in ("forward", "embed", "compute_logits")}
    restore = bench.instrument(engine, bench.PhaseTimes(), host_only=True)
    assert runner.model.forward != before["forward"]
    restore()
    assert {name: getattr(runner.model, name) for name in before} == before
    assert bench.model_runner.sample is sampler.sample and bench.TranscriptResult.result is TRANSCRIPT_RESULT


def test_the_host_reads_back_real_transcripts(tmp_path: Path) -> None:
    """The tokens the scheduler and the output processor see are the held-out transcripts', each sequence at its
    own place in them, so the text path runs on real text whatever the random model samples."""
    checkpoint = write_random_checkpoint(tmp_path / "tiny", "tiny", torch.float32, device="cpu")
    engine = LLMEngine(EngineConfig(model=str(checkpoint), device="cpu", max_num_seqs=2))
    tokenizer = load_tokenizer(checkpoint)
    transcripts = bench.TranscriptTokens(tokenizer)
    transcripts.feed(engine.core.runner)
    for seed in range(2):
        engine.add_request(bench.new_request(seed, stream=True))
    for _ in range(12):
        engine.step()
    words = set(" ".join(row["text"] for row in read_manifest()).split())
    for seq in engine.core.scheduler.running:
        tokens = seq.output_token_ids
        assert len(tokens) >= 8
        assert tokens == [transcripts.ids[(101 * seq.seq_id + i) % len(transcripts.ids)] for i in range(len(tokens))]
        text = parse_transcript(tokenizer.decode(tokens), "English")[1].split()
        assert all(word in words for word in text[1:-1])  # whole words inside; the ends may be cut
