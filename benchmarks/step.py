"""Host cost per engine step: what the host spends around the model in one step of a full batch.

    qasr bench step                                  # tiny preset on the CPU: 64, 256 and 512 running sequences
    qasr bench step --preset 0.6b --running 256 512  # real shapes on a GPU
    qasr bench step --text final                     # only requests that wait for their whole transcript

For each `--running` count, one engine holds that many sequences decoding (1 s clips, outputs longer than the run)
and runs `--steps` steps, pure decode, then as many steps that each also end the oldest request (aborted, with the
400 or so tokens it has) and take in a new request's prefill, so the count stays; the requests either stream text
deltas (`--text deltas`, each token's text made as it comes) or wait for the whole transcript (`final`,
TranscriptionRequest.stream False: the text made once, as a request ends), one kind after the other on the same
engine. Each phase's median time per step, in milliseconds: `schedule` (Scheduler.schedule), `prepare` (the runner
turning the step into input tensors), `update` (Scheduler.update with the sampled tokens), `detokenize`
(OutputProcessor.process: tokens to text deltas), `abort` (LLMEngine.abort of the request ended in a mixed step:
the scheduler's share and the request's last text, all of it for a `final` one), `other` (the rest of the step on
the host: the launch's and the engine core's own work around the tokens), their sum `host`, and `model` (the
device's work: the audio encoder, the decoder's forward, the logits and sampling; on a GPU only their enqueueing),
`encode` (of `model`, the log-mel features and the audio encoder: what a step with a new request adds), and
`mean_host`, the mean of `host` (with `--stream-interval` above 1 a streamed request's text is made every few
steps, which the median misses). The wait for the sampled tokens (and the benchmark's putting real transcripts'
tokens in their place) counts in none. On a GPU the host's phases overlap the device's work of the step before;
the host is the bound once `host` exceeds the device's step. On the CPU the model's arithmetic runs between the
host's phases on the same cores and leaves them cold caches, so they cost more than beside a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from qasr.benchmarks.heldout import read_manifest
from qasr.benchmarks.random_checkpoint import write_random_checkpoint
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.benchmarks.workload import synthetic_clip
from qasr.engine import model_runner
from qasr.engine.config import EngineConfig
from qasr.engine.llm_engine import LLMEngine
from qasr.engine.model_loader import resolve_device, resolve_dtype
from qasr.engine.model_runner import ModelRunner, PendingTokens
from qasr.engine.request import TranscriptionRequest
from qasr.engine.tokenizer import load_tokenizer
from qasr.scheduler import SamplingParams, Sequence

PHASES = ("schedule", "prepare", "update", "detokenize", "abort", "other")  # the host's
CLIP_SECONDS = 1.0


class PhaseTimes:
    """Seconds spent in each wrapped method during the steps being measured; `other` is what is left of a step."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, phase: str, method: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - start
        return timed

    def end_step(self, step_seconds: float) -> None:
        """`step_seconds`: the wall time of LLMEngine.step (an abort before it is timed on its own)."""
        # an abort is timed outside the step; the encoder's time is also the model's (a column of its own)
        timed = sum(seconds for phase, seconds in self.current.items() if phase not in ("abort", "encode"))
        self.current["other"] = step_seconds - timed
        self.steps.append(dict(self.current))
        self.current.clear()

    def medians_ms(self) -> dict[str, float]:
        """Each phase's median ms a step, `host` (their sum) as a median and a mean, and `model`."""
        row = {phase: 1000 * statistics.median(step.get(phase, 0.0) for step in self.steps) for phase in PHASES}
        host = [sum(step.get(p, 0.0) for p in PHASES) for step in self.steps]
        row["host_ms"] = 1000 * statistics.median(host)
        # a cost that comes every few steps (text at a stream_interval above 1) shows in the mean, not the median
        row["mean_host_ms"] = 1000 * statistics.fmean(host)
        row["model_ms"] = 1000 * statistics.median(step.get("model", 0.0) for step in self.steps)
        row["encode_ms"] = 1000 * statistics.median(step.get("encode", 0.0) for step in self.steps)
        return {f"{key}_ms" if not key.endswith("_ms") else key: value for key, value in row.items()}


def instrument(engine: LLMEngine, times: PhaseTimes, host_only: bool = False) -> Callable[[], None]:
    """Wraps the phases' methods on their objects (the device's work as `model`, the wait for its tokens as
    `wait`); with `host_only` the device's work is left out (see without_the_model). Returns what unwraps them."""
    core, runner = engine.core, engine.core.runner
    device_work = [(runner, "encode"), (runner.model, "embed"), (runner.model, "forward"),
                   (runner.model, "compute_logits"), (model_runner, "sample")]
    device_work += [(graphs, "run") for graphs in (runner.decode_graphs, runner.mixed_graphs) if graphs is not None]
    targets = [(core.scheduler, "schedule", "schedule"), (core.scheduler, "update", "update"),
               (runner, "prepare", "prepare"), (engine.output_processor, "process", "detokenize"),
               (TranscriptResult, "result", "wait")] + [(owner, name, "model") for owner, name in device_work]
    originals = [getattr(owner, name) for owner, name, _ in targets]
    stand_ins = without_the_model(runner) if host_only else {}
    for owner, name, phase in targets:
        setattr(owner, name, times.wrap(phase, stand_ins.get(name, getattr(owner, name))))
    runner.encode = times.wrap("encode", runner.encode)  # within `model`: its share, the log-mel and encoder

    def restore() -> None:
        for (owner, name, _), original in zip(targets, originals):
            setattr(owner, name, original)
    return restore


def without_the_model(runner: ModelRunner) -> dict[str, Callable]:
    """Stand-ins for the device's work that return zeros of the shapes the host goes on with (the tokens are the
    transcripts' anyway): the host's phases alone, as they run beside a GPU, without the CPU's forward between them
    (which leaves them cold caches and its freed memory). `--host-only`."""
    device = runner.device

    def encode(seqs: list[Sequence], waveforms: object) -> None:
        for seq in seqs:
            runner.encoder_cache[seq.seq_id] = torch.zeros(seq.audio.length, 1, device=device)

    def forward(embeds: object, positions: torch.Tensor, *args: object) -> torch.Tensor:
        return torch.zeros(len(positions), 1, device=device)  # one logit a row, below: token 0

    return {"encode": encode, "embed": lambda *args: None, "forward": forward, "run": forward,
            "compute_logits": lambda hidden: hidden}


class TranscriptTokens:
    """Real transcripts' tokens for the host to read back in place of the sampled ones: the held-out set's texts,
    each sequence at its own place in them. A random model's greedy output is one token over and over, a repetition
    loop (which real transcripts seldom are) that would time the text path on the wrong text; the tokens the device
    feeds itself stay the model's, which changes nothing the host does."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.ids = tokenizer.encode(" ".join(row["text"] for row in read_manifest() if row["text"]))
        self.positions: dict[int, int] = {}

    def next(self, seq_id: int) -> int:
        position = self.positions.get(seq_id, 101 * seq_id)
        self.positions[seq_id] = position + 1
        return self.ids[position % len(self.ids)]

    def feed(self, runner: ModelRunner) -> None:
        launch = runner.launch

        def launch_reading_transcripts(*args, **kwargs) -> TranscriptResult:
            return TranscriptResult(launch(*args, **kwargs), self)
        runner.launch = launch_reading_transcripts


@dataclass(slots=True)
class TranscriptResult:
    pending: PendingTokens
    transcripts: TranscriptTokens

    @property
    def seqs(self) -> list[Sequence]:
        return self.pending.seqs

    def result(self) -> list[int]:
        self.pending.result()
        return [self.transcripts.next(seq.seq_id) for seq in self.pending.seqs]


TEXT_KINDS = {"deltas": True, "final": False}  # --text: TranscriptionRequest.stream


def new_request(seed: int, stream: bool, temperature: float = 0.0) -> TranscriptionRequest:
    # longer than a run of steps; within the KV pool
    params = SamplingParams(max_tokens=400, ignore_eos=True, temperature=temperature)
    # the language is forced: its header is in the prompt, so every token's text goes through the transcript's
    # stream and repetition filter as a real transcript's does (a random model never writes the header itself)
    return TranscriptionRequest(synthetic_clip(CLIP_SECONDS, seed), language="English", sampling_params=params,
                                stream=stream)


def measure(config: EngineConfig, running: int, steps: int, texts: list[str], temperature: float = 0.0,
            host_only: bool = False) -> list[dict]:
    """One engine for `running` sequences: the pure-decode row and the mixed row for each kind of request in
    `texts`, one kind after the other (on a GPU an engine costs its graph captures)."""
    engine = LLMEngine(replace(config, max_num_seqs=running, max_num_batched_tokens=max(8192, 2 * running)))
    TranscriptTokens(load_tokenizer(engine.model_path)).feed(engine.core.runner)
    scheduler = engine.core.scheduler
    seeds = itertools.count()  # a new clip for every request: none is in the prefix cache
    rows = []
    for text in texts:
        stream = TEXT_KINDS[text]
        ids = [engine.add_request(new_request(next(seeds), stream, temperature)) for _ in range(running)]
        while scheduler.num_waiting or any(seq.num_output_tokens == 0 for seq in scheduler.running):
            engine.step()
        for _ in range(3):  # the overlapped step is in its steady state
            engine.step()
        for mixed in (False, True):
            times = PhaseTimes()
            restore = instrument(engine, times, host_only)
            for _ in range(steps):
                if mixed:
                    times.wrap("abort", engine.abort)(ids.pop(0))
                    ids.append(engine.add_request(new_request(next(seeds), stream, temperature)))
                start = time.perf_counter()
                engine.step()
                times.end_step(time.perf_counter() - start)
            restore()
            rows.append({"running": running, "text": text, "step": "decode + 1 prefill" if mixed else "decode",
                         "decoding": scheduler.num_running, **times.medians_ms()})
        for request_id in ids:
            engine.abort(request_id)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "0.6b", "1.7b"], default="tiny")
    parser.add_argument("--running", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--steps", type=int, default=30, help="steps measured per row")
    parser.add_argument("--text", choices=list(TEXT_KINDS), nargs="+", default=list(TEXT_KINDS),
                        help="what the requests want: text deltas as tokens come, or the final transcript")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="the requests' sampling temperature (0: greedy; above: drawn, timed in `model`)")
    parser.add_argument("--host-only", action="store_true",
                        help="leave the device's work out of the measured steps (zeros in its place): the host's "
                             "phases as they run beside a GPU, without the CPU's forward between them")
    parser.add_argument("--work-dir", default="/tmp/qasr-bench", help="where the random checkpoint is written")
    EngineConfig.add_cli_args(parser, exclude=("model", "max_num_seqs", "max_num_batched_tokens"))
    add_output_arguments(parser)


def main(args: argparse.Namespace) -> int:
    config = EngineConfig.from_cli_args(args, model=None, max_num_seqs=1, max_num_batched_tokens=8192)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    checkpoint = write_random_checkpoint(Path(args.work_dir) / f"{args.preset}-original", args.preset, dtype,
                                         device="cuda" if device.type == "cuda" else "cpu")
    config = replace(config, model=str(checkpoint), device=str(device), dtype=dtype)
    rows = [row for running in args.running
            for row in measure(config, running, args.steps, args.text, args.temperature, args.host_only)]
    print_table(rows)
    settings = {"preset": args.preset, "running": args.running, "steps": args.steps, "text": args.text,
                "clip_s": CLIP_SECONDS, "stream_interval": config.stream_interval, "temperature": args.temperature,
                "host_only": args.host_only,
                "dtype": str(dtype), "threads": torch.get_num_threads()}
    print(f"results: {write_results('step', device, settings, rows, args.out_dir)}")
    return 0
