"""Offline throughput: qasr against transformers batched generate on the same checkpoint and clips.

Output lengths are fixed (ignore_eos, about 4 tokens per second of audio) so both do the same work.
Long clips run twice in qasr: single pass, and split into pieces of at most `piece_seconds` decoded as
parallel sequences (what the engine does by default). `qasr_first_token_s` is the first token of the whole
batch; `qasr_ttft_concurrency1_s` is one clip alone on an idle engine (median of 3 new clips). Each row runs
`--repeats` times, transformers and qasr alternating on new clips each time, and reports the median walls.
Where qasr's time went, the mean of the repeats (benchmarks/step_spans.py, which says how to read them):
`qasr_single_pass_s` (the wall), `qasr_single_pass_prefill_s` and `_decode_s` (the device spans of the steps with
prefill work and of the pure decode steps), `_prefill_launch_s` and `_decode_launch_s` (the host's time launching
them) and their step counts; the same for `qasr_split`.

`--mixed-seconds LOW HIGH` adds a row of clips whose lengths are drawn from LOW-HIGH seconds, the shape of real
traffic: transformers takes them in arrival order, `batch_size` at a time, each batch generating as long as its
longest clip needs (a batch ends together); qasr's continuous batching gives each clip its own output length and
takes the next clip as soon as one ends. Both get the same audio.

`--heldout` adds a row of real work: the bundled demo model over the committed held-out set (speech, several
sentences, silence and noise), greedy to each transcript's end in both, transformers `batch_size` clips at a time in
the set's order; `same_text` counts the clips whose transcripts agree.

On the CPU transformers runs in a process of its own, as users run it, so that neither runs on the heap the other
left nor under the other's process-wide settings (a qasr CPU engine sets glibc's heap thresholds,
engine.host_memory; benchmarks/transformers_side.py).
"""

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from qasr.benchmarks.random_checkpoint import write_random_checkpoint
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.benchmarks.step_spans import StepSpans, step_spans
from qasr.benchmarks.transformers_side import (
    HELDOUT_MAX_TOKENS,
    TransformersProcess,
    TransformersSide,
    transformers_side,
)
from qasr.benchmarks.workload import SAMPLE_RATE, output_tokens, sync, synthetic_clip
from qasr.engine.config import EngineConfig
from qasr.engine.hf_conversion import convert_to_hf
from qasr.engine.llm_engine import LLMEngine
from qasr.engine.model_loader import resolve_device, resolve_dtype
from qasr.engine.request import TranscriptionRequest
from qasr.engine.splitting import max_pieces, split_audio
from qasr.scheduler import SamplingParams

CLIPS_PER_REPEAT = 100_000  # seed offset of each repeat's clips


def run_qasr(engine: LLMEngine, items: list[tuple[np.ndarray, int]]) -> tuple[float, float | None]:
    """Runs every (samples, max_tokens) item to completion; returns (wall seconds, first-token latency)."""
    sync(engine.core.device)
    start = time.perf_counter()
    request_ids = []
    first_token = None
    try:
        for samples, max_tokens in items:
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
            request_ids.append(engine.add_request(TranscriptionRequest(samples, sampling_params=params, stream=False)))
        while engine.has_unfinished:
            outputs = engine.step()
            if first_token is None and (outputs or any(s.num_output_tokens for s in engine.core.scheduler.running)):
                first_token = time.perf_counter() - start
    except BaseException:  # out of memory, say: the next row must not run this one's leftovers
        for request_id in request_ids:
            engine.abort(request_id)
        raise
    sync(engine.core.device)
    return time.perf_counter() - start, first_token


def split_width(batch_size: int, longest: float, piece_seconds: float) -> int:
    """Sequences in flight when batch_size clips of up to `longest` seconds are each split into pieces: as many as
    the splitter can cut (a 120 s clip in pieces of 30 s: up to 5; a width of 4 a clip left a fifth of the pieces
    waiting for a place)."""
    return max(batch_size, 1) * max_pieces(int(longest * SAMPLE_RATE), piece_seconds)


@contextmanager
def step_width(engine: LLMEngine, max_num_seqs: int) -> Iterator[None]:
    """At most max_num_seqs sequences in a step (no more than the engine was built for) inside the block."""
    config = engine.core.scheduler.config
    if max_num_seqs > engine.config.max_num_seqs:
        raise ValueError(f"{max_num_seqs} sequences a step: the engine was built for {engine.config.max_num_seqs}")
    previous, config.max_num_seqs = config.max_num_seqs, max_num_seqs
    try:
        yield
    finally:  # a run that fails must not leave the next ones another width
        config.max_num_seqs = previous


def first_token_alone(engine: LLMEngine, clips: list[np.ndarray]) -> float:
    """Median time from submitting one clip to an idle engine until its first generated token is on the host:
    time to first token at concurrency 1. Clips the engine has not seen (a cached prompt would skip the prefill)."""
    times = []
    for clip in clips:
        sync(engine.core.device)
        start = time.perf_counter()
        request_id = engine.add_request(TranscriptionRequest(clip, sampling_params=SamplingParams(max_tokens=2,
                                                                                                ignore_eos=True)))
        while not any(s.num_output_tokens for s in engine.core.scheduler.running):
            engine.step()
        times.append(time.perf_counter() - start)
        engine.abort(request_id)
    return float(np.median(times))


def heldout_row(side: TransformersSide | TransformersProcess, batch_size: int, engine_options: EngineConfig,
                device: torch.device, dtype: torch.dtype, repeats: int, limit: int | None = None) -> dict:
    """The demo model over the held-out set (its first `limit` clips), qasr against transformers, each transcript
    as long as it is."""
    from qasr.benchmarks.heldout import HELDOUT, read_manifest
    from qasr.engine.audio import load_audio

    clips = [load_audio(str(HELDOUT / row["file"])) for row in read_manifest()[:limit]]
    audio_seconds = sum(len(c) for c in clips) / SAMPLE_RATE
    engine = LLMEngine(replace(engine_options, model=None, device=str(device), dtype=dtype,
                               max_num_seqs=max(batch_size, 1)))
    params = SamplingParams(max_tokens=HELDOUT_MAX_TOKENS)
    run_qasr(engine, [(clips[0], 4)])  # warm, as the baseline is on its first call
    hf_walls, qasr_walls = [], []
    for _ in range(repeats):
        hf_wall, hf_texts = side.heldout(batch_size, limit)
        hf_walls.append(hf_wall)
        start = time.perf_counter()
        ids = [engine.add_request(TranscriptionRequest(c, sampling_params=params, stream=False)) for c in clips]
        texts: dict[str, str] = {}
        while engine.has_unfinished:
            texts.update((o.request_id, o.result.text) for o in engine.step() if o.finished and o.result is not None)
        sync(device)
        qasr_walls.append(time.perf_counter() - start)
    hf_wall, qasr_wall = statistics.median(hf_walls), statistics.median(qasr_walls)
    same = sum(texts[request_id] == hf_text for request_id, hf_text in zip(ids, hf_texts))
    return {"clip_s": "held-out set (demo model)", "clips": len(clips), "audio_s": audio_seconds,
            "transformers_rtfx": audio_seconds / hf_wall, "qasr_single_pass_rtfx": audio_seconds / qasr_wall,
            "speedup_single_pass": hf_wall / qasr_wall, "same_text": f"{same}/{len(clips)}"}


def run(preset: str, clip_seconds: list[float], num_clips: int, tokens_per_second: float, piece_seconds: float,
        batch_size: int, engine_options: EngineConfig, work_dir: Path, out_dir: Path,
        mixed_seconds: tuple[float, float] | None = None, heldout: int | None = None,
        repeats: int = 1, baseline: bool = True) -> tuple[list[dict], Path]:
    """`engine_options` without a model: the preset's random checkpoint is written (once) under `work_dir`. Each
    row is timed `repeats` times, the two alternating; its walls are the medians. `heldout`: the held-out row's
    number of clips (-1: all). `baseline` False: qasr alone, the transformers fields None (no held-out row)."""
    if heldout is not None and not baseline:
        raise ValueError("the held-out row compares qasr's transcripts with transformers': it needs the baseline")
    # no prefix cache: the split runs take the single pass's clips again (a clip shorter than a piece unchanged), the
    # held-out row takes the same clips each time, and transformers has no such cache
    engine_options = replace(engine_options, enable_prefix_caching=False)
    device = resolve_device(engine_options.device)
    dtype = resolve_dtype(engine_options.dtype, device)

    original = write_random_checkpoint(work_dir / f"{preset}-original", preset, dtype,
                                       device="cuda" if device.type == "cuda" else "cpu")
    hf = work_dir / f"{preset}-hf"
    if baseline and not (hf / "config.json").exists():
        convert_to_hf(original, hf)
    longest = max([*clip_seconds, *(mixed_seconds or ())])
    # built for the widest split run, so that its decode graphs (captured up to max_num_seqs, once) cover every run's
    # batch; each run then caps the sequences in a step at its own width (a batch the graphs do not cover would run
    # eagerly, launch by launch: the H200 run of 2026-12-04 timed its split rows so)
    single = LLMEngine(replace(engine_options, model=str(original), device=str(device), dtype=dtype,
                               max_num_seqs=split_width(batch_size, longest, piece_seconds),
                               max_piece_seconds=1200.0))
    side = transformers_side(str(hf), dtype, device) if baseline else None
    try:
        rows = _rows(single, side, clip_seconds, num_clips, tokens_per_second, piece_seconds, batch_size,
                     mixed_seconds, repeats)
        if heldout is not None and side is not None:
            rows.append(heldout_row(side, batch_size, engine_options, device, dtype, repeats,
                                    None if heldout < 0 else heldout))
    finally:
        if side is not None:
            side.close()
    config = {"preset": preset, "model_shape": {k: v for k, v in _shape(single).items()}, "clip_seconds": clip_seconds,
              "mixed_seconds": mixed_seconds, "heldout": heldout, "repeats": repeats, "num_clips": num_clips,
              "tokens_per_second": tokens_per_second,
              "piece_seconds": piece_seconds, "batch_size": batch_size, "dtype": str(dtype),
              "engine_max_num_seqs": single.config.max_num_seqs,
              "transformers_process": None if side is None else "own" if isinstance(side, TransformersProcess)
              else "this",
              "engine_options": {k: v for k, v in asdict(engine_options).items() if k not in ("model", "dtype")}}
    return rows, write_results("throughput", device, config, rows, out_dir, name=preset)


def _rows(single: LLMEngine, side: TransformersSide | TransformersProcess | None, clip_seconds: list[float],
          num_clips: int, tokens_per_second: float, piece_seconds: float, batch_size: int,
          mixed_seconds: tuple[float, float] | None, repeats: int) -> list[dict]:
    run_qasr(single, [(synthetic_clip(2.0, 999), 4)])  # warm both
    if side is not None:
        side.generate([(2.0, 999)], 4, 1)

    lengths_of_rows = [(seconds, [seconds] * num_clips) for seconds in clip_seconds]
    if mixed_seconds is not None:
        lengths_of_rows.append((f"{mixed_seconds[0]:g}-{mixed_seconds[1]:g} mixed",
                                list(np.random.default_rng(0).uniform(*mixed_seconds, size=num_clips))))
    rows = []
    for label, lengths in lengths_of_rows:
        try:
            rows.append(_row(single, side, label, lengths, num_clips, tokens_per_second, piece_seconds, batch_size,
                             repeats))
        except torch.OutOfMemoryError as error:  # the other rows still run, and the JSON keeps this one's reason
            rows.append({"clip_s": label, "clips": num_clips, "error": f"out of memory: {error}"[:500]})
            torch.cuda.empty_cache()
    return rows


def _row(single: LLMEngine, side: TransformersSide | TransformersProcess | None, label: str | float,
         lengths: list[float], num_clips: int, tokens_per_second: float, piece_seconds: float, batch_size: int,
         repeats: int) -> dict:
    audio_seconds, longest = sum(lengths), max(lengths)
    tokens = [output_tokens(length, tokens_per_second) for length in lengths]
    hf_walls, hf_batch_sizes, qasr_walls, first_tokens, split_walls = [], [], [], [], []
    single_spans, split_spans = StepSpans(), StepSpans()
    for repeat in range(repeats):
        # new clips each time, the same for both
        named = [(float(length), seed + CLIPS_PER_REPEAT * repeat) for seed, length in enumerate(lengths)]
        clips = [synthetic_clip(*name) for name in named]
        if side is not None:
            timed = [side.generate(named[i:i + batch_size], max(tokens[i:i + batch_size]), batch_size)
                     for i in range(0, len(clips), batch_size)]
            hf_walls.append(sum(wall for wall, _ in timed))
            hf_batch_sizes.append(min(size for _, size in timed))
        with step_width(single, max(batch_size, 1)), step_spans(single, single_spans):
            wall, first_token = run_qasr(single, list(zip(clips, tokens)))
        qasr_walls.append(wall)
        first_tokens.append(first_token)
        if longest > piece_seconds:
            pieces = [(p.samples, output_tokens(p.duration, tokens_per_second))
                      for c in clips for p in split_audio(c, piece_seconds)]
            # the same number of audios in flight as single pass, each as several parallel sequences
            with step_width(single, split_width(batch_size, longest, piece_seconds)), step_spans(single, split_spans):
                split_walls.append(run_qasr(single, pieces)[0])
    hf_wall = statistics.median(hf_walls) if hf_walls else None
    qasr_wall = statistics.median(qasr_walls)
    row = {"clip_s": label, "clips": num_clips, "audio_s": audio_seconds,
           "output_tokens_per_clip": tokens[0] if len(set(tokens)) == 1 else None,
           "qasr_output_tokens": sum(tokens), "transformers_batch_size": min(hf_batch_sizes, default=None),
           "transformers_rtfx": audio_seconds / hf_wall if hf_wall is not None else None,
           "qasr_single_pass_rtfx": audio_seconds / qasr_wall, "qasr_split_rtfx": None,
           "speedup_single_pass": hf_wall / qasr_wall if hf_wall is not None else None, "speedup_split": None,
           "qasr_first_token_s": statistics.median(first_tokens),
           "qasr_ttft_concurrency1_s": first_token_alone(single, [
               synthetic_clip(float(lengths[0]), CLIPS_PER_REPEAT * repeats + k) for k in range(3)]),
           "qasr_single_pass_s": statistics.fmean(qasr_walls), **single_spans.as_row("qasr_single_pass", repeats)}
    if split_walls:
        split_wall = statistics.median(split_walls)
        row["qasr_split_rtfx"] = audio_seconds / split_wall
        row["speedup_split"] = hf_wall / split_wall if hf_wall is not None else None
        row.update({"qasr_split_s": statistics.fmean(split_walls), **split_spans.as_row("qasr_split", repeats)})
    return row


def _shape(engine: LLMEngine) -> dict:
    a, t = engine.model_config.audio, engine.model_config.text
    return {"encoder_d_model": a.d_model, "encoder_layers": a.num_layers, "hidden_size": t.hidden_size,
            "decoder_layers": t.num_layers, "heads": t.num_heads, "kv_heads": t.num_kv_heads, "head_dim": t.head_dim,
            "vocab_size": t.vocab_size}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "0.6b", "1.7b"], default="tiny")
    parser.add_argument("--clip-seconds", type=float, nargs="+", default=[10.0, 30.0, 120.0])
    parser.add_argument("--num-clips", type=int, default=8, help="clips per row")
    parser.add_argument("--mixed-seconds", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="add a row of clips with lengths drawn from LOW-HIGH seconds")
    parser.add_argument("--heldout", type=int, nargs="?", const=-1, default=None, metavar="CLIPS",
                        help="add a row of the bundled demo model over the held-out set (its first CLIPS clips; all "
                             "by default), each transcript to its end")
    parser.add_argument("--repeats", type=int, default=3,
                        help="times each row is timed, the two alternating, new clips each time; medians reported")
    parser.add_argument("--tokens-per-second", type=float, default=4.0)
    parser.add_argument("--piece-seconds", type=float, default=30.0, help="piece length of the split runs")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers batch and qasr max_num_seqs")
    parser.add_argument("--work-dir", default="/tmp/qasr-bench", help="where the random checkpoints are written")
    parser.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True,
                        help="time transformers beside qasr (--no-transformers: qasr alone, say for a second engine "
                             "setting on a GPU whose baseline an earlier run of the same session measured)")
    add_output_arguments(parser)
    # the model is the preset's random checkpoint; max_num_seqs and the pieces follow from the flags above
    EngineConfig.add_cli_args(parser, exclude=("model", "max_num_seqs", "max_piece_seconds"))


def main(args: argparse.Namespace) -> int:
    engine_options = EngineConfig.from_cli_args(args, max_num_seqs=max(args.batch_size, 1))
    rows, path = run(args.preset, args.clip_seconds, args.num_clips, args.tokens_per_second, args.piece_seconds,
                     args.batch_size, engine_options, Path(args.work_dir), args.out_dir,
                     tuple(args.mixed_seconds) if args.mixed_seconds else None, args.heldout, args.repeats,
                     args.transformers)
    print_table(rows)
    print(f"results: {path}")
    return 0
