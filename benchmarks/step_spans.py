"""Where a throughput run's time goes: each launched step's span and its launch's host time, summed by kind.

A step's span runs from the first work it puts on the device to its last: two CUDA events on the stream around
ModelRunner.launch, read once the run is over (no wait during it). Its launch time is the host's wall time inside
ModelRunner.launch (preparing the inputs and enqueueing the work). On the CPU, where a launch does the work, the two
are the same. Steps with prefill work (audio to encode, or prompt chunks) are told from pure decode steps.

Reading them on a GPU: while the device is busy with the step before, a step's start event waits for it, so the spans
follow one another and measure the device's work. A span close to its launch time means the device was waiting for
the launch (a launch-bound step: an eager step's Python launches come slower than the device runs them), and what the
run's wall has beyond the spans is the device idle between steps, waiting for the host's work outside the launch
(scheduling, the sampled tokens' update, their text).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from qasr.engine.llm_engine import LLMEngine
from qasr.engine.model_runner import PendingTokens
from qasr.scheduler import SchedulerOutput

KINDS = ("prefill", "decode")


@dataclass(slots=True)
class KindTotals:
    steps: int = 0
    span_s: float = 0.0
    launch_s: float = 0.0


@dataclass(slots=True)
class StepSpans:
    totals: dict[str, KindTotals] = field(default_factory=lambda: {kind: KindTotals() for kind in KINDS})
    # (kind, start, end, launch seconds) of each step while the run goes: start and end are CUDA events on a GPU
    marks: list[tuple[str, torch.cuda.Event | None, torch.cuda.Event | None, float]] = field(default_factory=list)

    def as_row(self, prefix: str, runs: int = 1) -> dict[str, float]:
        """The totals as row fields (`{prefix}_prefill_steps`, `_prefill_s`, `_prefill_launch_s`, the same for
        decode), each the mean of `runs` runs."""
        row = {}
        for kind, totals in self.totals.items():
            row[f"{prefix}_{kind}_steps"] = totals.steps / runs
            row[f"{prefix}_{kind}_s"] = totals.span_s / runs
            row[f"{prefix}_{kind}_launch_s"] = totals.launch_s / runs
        return row


def step_kind(step: SchedulerOutput) -> str:
    return "prefill" if step.to_encode or step.num_decodes < len(step.chunks) else "decode"


@contextmanager
def step_spans(engine: LLMEngine, spans: StepSpans) -> Iterator[StepSpans]:
    """Adds the steps launched inside the block to `spans` when it ends (on a GPU after waiting for the device;
    a block that raises adds nothing)."""
    runner = engine.core.runner
    cuda = runner.device.type == "cuda"
    had_own_launch = "launch" in vars(runner)
    launch = runner.launch

    def timed_launch(step: SchedulerOutput, waveforms: Mapping[int, np.ndarray]) -> PendingTokens:
        if step.is_empty and not step.to_encode:
            return launch(step, waveforms)
        start_event = end_event = None
        if cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        pending = launch(step, waveforms)
        seconds = time.perf_counter() - start
        if end_event is not None:
            end_event.record()
        spans.marks.append((step_kind(step), start_event, end_event, seconds))
        return pending

    runner.launch = timed_launch
    try:
        yield spans
    except BaseException:
        spans.marks.clear()
        raise
    finally:
        if had_own_launch:
            runner.launch = launch
        else:
            del runner.launch  # the class's method again
    if cuda:
        torch.cuda.synchronize(runner.device)
    for kind, start_event, end_event, seconds in spans.marks:
        totals = spans.totals[kind]
        totals.steps += 1
        totals.span_s += start_event.elapsed_time(end_event) / 1000 if cuda else seconds  # type: ignore[union-attr]
        totals.launch_s += seconds
    spans.marks.clear()
