"""The offline throughput benchmark end to end on the CPU with the tiny shape, so its code runs in make test."""

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qasr.benchmarks import throughput as bench
from qasr.benchmarks.transformers_side import TransformersProcess
from qasr.scheduler import SchedulerConfig

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def test_throughput_benchmark_writes_the_standard_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--preset", "tiny", "--clip-seconds", "3", "7", "--num-clips", "2", "--piece-seconds",
                              "5", "--batch-size", "2", "--device", "cpu", "--work-dir", str(tmp_path / "work"),
                              "--out-dir", str(tmp_path / "out"), "--mixed-seconds", "1", "8", "--repeats", "2",
                              "--heldout", "3"])
    assert bench.main(args) == 0
    [path] = (tmp_path / "out").glob("throughput-cpu-*.json")
    document = json.loads(path.read_text())
    assert set(document) == TOP_LEVEL_KEYS and document["benchmark"] == "throughput"
    # the CPU named with its vector units: machines of one model name differ in them
    assert document["device"].endswith(f"cores, {torch.backends.cpu.get_cpu_capability()})")
    assert document["config"]["model_shape"]["decoder_layers"] == 2
    short, long, mixed, heldout = document["results"]
    assert document["config"]["repeats"] == 2
    # built for the widest split (2 clips of up to 8 s in pieces of 5 s: up to 3 each, cut 2.5-5 s into the rest),
    # so CUDA graphs would cover every run
    assert document["config"]["engine_max_num_seqs"] == bench.split_width(2, 8.0, 5.0) == 6
    assert document["config"]["engine_options"]["enable_prefix_caching"] is False  # repeats and splits reuse clips
    assert document["config"]["transformers_process"] == "own"  # on the CPU: neither runs on the other's heap
    for row in (short, long, mixed):
        assert row["transformers_rtfx"] > 0 and row["qasr_single_pass_rtfx"] > 0 and row["speedup_single_pass"] > 0
        assert row["qasr_first_token_s"] > 0 and row["qasr_ttft_concurrency1_s"] > 0
        # where qasr's time went: every run has a prefill step and decode steps, their spans inside its wall
        for run in ("qasr_single_pass",) + (("qasr_split",) if row["qasr_split_rtfx"] else ()):
            assert row[f"{run}_prefill_steps"] >= 1 and row[f"{run}_decode_steps"] >= 1
            assert 0 < row[f"{run}_prefill_s"] + row[f"{run}_decode_s"] <= row[f"{run}_s"]
            assert row[f"{run}_prefill_launch_s"] == row[f"{run}_prefill_s"]  # on the CPU the launch does the work
    assert short["qasr_split_rtfx"] is None and "qasr_split_s" not in short  # 3 s fits one piece
    assert long["qasr_split_rtfx"] > 0 and long["speedup_split"] > 0  # 7 s is split into pieces of at most 5 s
    assert long["output_tokens_per_clip"] == 28
    lengths = np.random.default_rng(0).uniform(1, 8, size=2)  # the mixed row's draw
    assert mixed["clip_s"] == "1-8 mixed" and mixed["audio_s"] == pytest.approx(lengths.sum(), abs=1e-3)
    assert mixed["output_tokens_per_clip"] is None
    assert mixed["qasr_output_tokens"] == sum(bench.output_tokens(length, 4.0) for length in lengths)
    assert heldout["clips"] == 3 and heldout["transformers_rtfx"] > 0 and heldout["speedup_single_pass"] > 0
    assert heldout["same_text"] == "3/3"  # the demo model's greedy transcripts, token for token


def test_a_run_caps_the_step_width_and_puts_it_back() -> None:
    scheduler_config = SchedulerConfig(max_num_seqs=8)
    engine = SimpleNamespace(config=SimpleNamespace(max_num_seqs=8),
                             core=SimpleNamespace(scheduler=SimpleNamespace(config=scheduler_config)))
    with pytest.raises(RuntimeError, match="a failed run"), bench.step_width(engine, 2):
        assert scheduler_config.max_num_seqs == 2
        raise RuntimeError("a failed run")
    assert scheduler_config.max_num_seqs == 8
    with pytest.raises(ValueError, match="built for 8"), bench.step_width(engine, 9):
        pass


def test_a_transformers_process_that_fails_says_why(tmp_path: Path) -> None:
    """On the CPU transformers runs in a child process: its error comes back with the child's traceback."""
    with pytest.raises(RuntimeError, match="(?s)the transformers process failed.*missing"):
        TransformersProcess(str(tmp_path / "missing"), torch.float32, "cpu")


def test_transformers_runs_at_the_largest_batch_that_fits_the_gpu() -> None:
    """A batch that runs out of GPU memory (transformers' encoder holds every chunk's convolution output at once) is
    timed again at half the batch, and the row says which batch it took."""
    from qasr.benchmarks.transformers_side import TransformersSide

    side, batches = object.__new__(TransformersSide), []

    def timed(audio: list, max_tokens: int, batch_size: int) -> float:
        batches.append(batch_size)
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 1.5

    side._timed = timed
    assert side.generate([(1.0, seed) for seed in range(8)], 4, 8) == (1.5, 2)
    assert batches == [8, 4, 2]
    batches.clear()

    def never_fits(audio: list, max_tokens: int, batch_size: int) -> float:
        batches.append(batch_size)
        raise torch.OutOfMemoryError("CUDA out of memory")

    side._timed = never_fits
    with pytest.raises(torch.OutOfMemoryError):  # not even one clip fits: the row reports it
        side.generate([(1.0, 0), (1.0, 1)], 4, 2)
    assert batches == [2, 1]


def test_a_run_that_fails_leaves_no_requests_for_the_next_row(checkpoint_root: Path, shapes, write_checkpoint) -> None:
    """A row that runs out of memory is reported and the next one runs: on an engine holding none of its requests."""
    from qasr.benchmarks.workload import synthetic_clip
    from qasr.engine.config import EngineConfig
    from qasr.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(write_checkpoint(checkpoint_root / "throughput-abort", shapes[0],
                                                               layout="original", seed=1))))
    items = [(synthetic_clip(2.0, seed), 8) for seed in range(3)]
    step, steps = engine.step, []

    def failing_step() -> list:
        steps.append(1)
        if len(steps) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return step()

    engine.step = failing_step
    with pytest.raises(torch.OutOfMemoryError):
        bench.run_qasr(engine, items)
    assert not engine.has_unfinished
    engine.step = step
    wall, first_token = bench.run_qasr(engine, items)
    assert wall > 0 and first_token is not None and not engine.has_unfinished


def test_step_spans_count_each_launched_step_by_kind_within_the_wall(checkpoint_root: Path, shapes,
                                                                     write_checkpoint) -> None:
    from qasr.benchmarks.step_spans import StepSpans, step_spans
    from qasr.benchmarks.workload import synthetic_clip
    from qasr.engine.config import EngineConfig
    from qasr.engine.llm_engine import LLMEngine
    from qasr.engine.model_runner import ModelRunner

    engine = LLMEngine(EngineConfig(model=str(write_checkpoint(checkpoint_root / "throughput-spans", shapes[0],
                                                               layout="original", seed=1)), max_num_seqs=1))
    spans = StepSpans()
    with step_spans(engine, spans):
        # one sequence a step: each clip's prefill step, then its three decode steps (its tokens 2 to 4)
        wall, _ = bench.run_qasr(engine, [(synthetic_clip(2.0, seed), 4) for seed in range(2)])
    prefill, decode = spans.totals["prefill"], spans.totals["decode"]
    assert (prefill.steps, decode.steps) == (2, 6)
    assert prefill.span_s > 0 and decode.span_s > 0 and prefill.span_s + decode.span_s <= wall
    assert prefill.launch_s == prefill.span_s  # on the CPU the launch does the work
    assert "launch" not in vars(engine.core.runner) and engine.core.runner.launch.__func__ is ModelRunner.launch
    bench.run_qasr(engine, [(synthetic_clip(2.0, 9), 4)])  # after the block: no longer counted
    assert (prefill.steps, decode.steps) == (2, 6) and not spans.marks
    assert spans.as_row("split", runs=2) == {
        "split_prefill_steps": 1, "split_prefill_s": prefill.span_s / 2, "split_prefill_launch_s": prefill.launch_s / 2,
        "split_decode_steps": 3, "split_decode_s": decode.span_s / 2, "split_decode_launch_s": decode.launch_s / 2}
    with pytest.raises(RuntimeError, match="a failed run"), step_spans(engine, spans):
        bench.run_qasr(engine, [(synthetic_clip(2.0, 10), 4)])
        raise RuntimeError("a failed run")
    assert (prefill.steps, decode.steps) == (2, 6) and not spans.marks  # a failed block adds nothing
    assert "launch" not in vars(engine.core.runner)


def test_without_transformers_qasr_runs_alone(tmp_path: Path) -> None:
    """`--no-transformers`: qasr's rows alone (a second engine setting beside an earlier run's baseline on a GPU)."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--preset", "tiny", "--clip-seconds", "3", "--num-clips", "2", "--batch-size", "2",
                              "--device", "cpu", "--work-dir", str(tmp_path / "work"), "--out-dir",
                              str(tmp_path / "out"), "--repeats", "1", "--no-transformers"])
    assert bench.main(args) == 0
    [path] = (tmp_path / "out").glob("throughput-cpu-*.json")
    document = json.loads(path.read_text())
    assert document["config"]["transformers_process"] is None
    [row] = document["results"]
    assert row["transformers_rtfx"] is row["speedup_single_pass"] is row["transformers_batch_size"] is None
    assert row["qasr_single_pass_rtfx"] > 0 and row["qasr_single_pass_prefill_steps"] >= 1
    assert not (tmp_path / "work" / "tiny-hf").exists()  # nothing converted for a baseline that does not run
    with pytest.raises(ValueError, match="needs the baseline"):
        bench.main(parser.parse_args(["--preset", "tiny", "--clip-seconds", "3", "--num-clips", "1", "--device", "cpu",
                                      "--work-dir", str(tmp_path / "work"), "--heldout", "1", "--no-transformers"]))
