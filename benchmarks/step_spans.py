"""Where a throughput run's time goes: each launched step's span, summed by kind.

A step's span runs from the first work it puts on the device to its last: two CUDA events on the stream around
ModelRunner.launch, read once the run is over (no wait during it); on the CPU, where a launch does the work, its wall
time. Steps with prefill work (audio to encode, or prompt chunks) are told from pure decode steps. On a GPU a span
also holds the device's idle gaps inside the step (an eager step whose launches come slower than the device runs
them), and what the run's wall has beyond the spans is the device waiting between steps, for the host.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from qasr.engine.llm_engine import LLMEngine
from qasr.scheduler import SchedulerOutput


@dataclass(slots=True)
class StepSpans:
    prefill_steps: int = 0
    prefill_s: float = 0.0
    decode_steps: int = 0
    decode_s: float = 0.0
    # (has prefill work, start, end) of each step while the run goes: events on a GPU, perf_counter on the CPU
    marks: list[tuple[bool, object, object]] = field(default_factory=list)

    def add(self, prefill: bool, seconds: float) -> None:
        if prefill:
            self.prefill_steps += 1
            self.prefill_s += seconds
        else:
            self.decode_steps += 1
            self.decode_s += seconds

    def as_row(self, prefix: str, runs: int = 1) -> dict[str, float]:
        """The sums as row fields, the mean of `runs` runs' spans."""
        return {f"{prefix}_prefill_steps": self.prefill_steps / runs, f"{prefix}_prefill_s": self.prefill_s / runs,
                f"{prefix}_decode_steps": self.decode_steps / runs, f"{prefix}_decode_s": self.decode_s / runs}


def has_prefill_work(step: SchedulerOutput) -> bool:
    return bool(step.to_encode) or step.num_decodes < len(step.chunks)


@contextmanager
def step_spans(engine: LLMEngine, spans: StepSpans) -> Iterator[StepSpans]:
    """Adds the spans of the steps launched inside the block to `spans` (when it ends: on a GPU after waiting for
    the device)."""
    runner = engine.core.runner
    launch = runner.launch
    cuda = runner.device.type == "cuda"

    def timed_launch(step: SchedulerOutput, waveforms):
        if step.is_empty and not step.to_encode:
            return launch(step, waveforms)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            pending = launch(step, waveforms)
            end.record()
        else:
            start = time.perf_counter()
            pending = launch(step, waveforms)
            end = time.perf_counter()
        spans.marks.append((has_prefill_work(step), start, end))
        return pending

    runner.launch = timed_launch
    try:
        yield spans
    finally:
        runner.launch = launch
        if cuda:
            torch.cuda.synchronize(runner.device)
        for prefill, start, end in spans.marks:
            seconds = start.elapsed_time(end) / 1000 if cuda else end - start  # type: ignore[attr-defined]
            spans.add(prefill, seconds)
        spans.marks.clear()
