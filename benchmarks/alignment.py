"""What word timestamps cost: the same clips transcribed alone and transcribed + aligned, side by side in one run.

One engine with a random forced aligner loaded beside a random ASR model (the preset's shapes; the aligner at
Qwen3-ForcedAligner-0.6B's on the GPU presets). Output lengths are fixed (ignore_eos, about 4 tokens per second of
audio), sampled with a seed per clip (the same text in every run) and the language is forced to English, so every
transcript has words for the aligner to time. Each length
runs transcription alone, then transcription + alignment, then alone again; the table reports the better of the two
plain runs, so a cold first run does not flatter the aligned one.
"""

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from qasr.benchmarks.random_checkpoint import write_random_checkpoint
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.benchmarks.workload import output_tokens, sync, synthetic_clip
from qasr.engine.config import EngineConfig
from qasr.engine.llm_engine import LLMEngine
from qasr.engine.model_loader import resolve_dtype
from qasr.engine.request import TranscriptionRequest
from qasr.scheduler import SamplingParams


def run_engine(engine: LLMEngine, clips: list[np.ndarray], max_tokens: int,
               words: bool) -> tuple[float, int, list[int]]:
    """Runs every clip to completion; returns (wall seconds, words timed, pieces in each aligner pass)."""
    passes: list[int] = []
    align = engine.core.aligner.align if engine.core.aligner else None

    def counting(jobs, waveforms):
        passes.append(len(jobs))
        return align(jobs, waveforms)

    if engine.core.aligner:
        engine.core.aligner.align = counting
    sync(engine.core.device)
    start = time.perf_counter()
    try:
        for seed, clip in enumerate(clips):
            # sampled, seeded: a random model's greedy output is one token repeated, which leaves one word
            params = SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, ignore_eos=True)
            engine.add_request(TranscriptionRequest(clip, language="en", sampling_params=params,
                                                    word_timestamps=words, stream=False))
        timed = 0
        while engine.has_unfinished:
            for output in engine.step():
                if output.finished and output.result.words:
                    timed += len(output.result.words)
        sync(engine.core.device)
    finally:
        if engine.core.aligner:
            engine.core.aligner.align = align
    return time.perf_counter() - start, timed, passes


def run(preset: str, clip_seconds: list[float], num_clips: int, tokens_per_second: float,
        engine_options: EngineConfig, work_dir: Path, out_dir: Path) -> tuple[list[dict], Path]:
    device = torch.device(engine_options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(engine_options.dtype, device)
    where = "cuda" if device.type == "cuda" else "cpu"
    model = write_random_checkpoint(work_dir / f"{preset}-original", preset, dtype, device=where)
    aligner = write_random_checkpoint(work_dir / f"{preset}-aligner", preset, dtype, device=where, aligner=True)
    engine = LLMEngine(replace(engine_options, model=str(model), aligner_model=str(aligner), device=str(device),
                               dtype=dtype))
    warm = [synthetic_clip(2.0, 999)]
    run_engine(engine, warm, 4, words=True)

    rows = []
    for seconds in clip_seconds:
        clips = [synthetic_clip(seconds, seed) for seed in range(num_clips)]
        max_tokens = output_tokens(seconds, tokens_per_second)
        plain_first, _, _ = run_engine(engine, clips, max_tokens, words=False)
        aligned, timed, passes = run_engine(engine, clips, max_tokens, words=True)
        assert timed > 0, "no word was timed"
        plain_second, _, _ = run_engine(engine, clips, max_tokens, words=False)
        plain = min(plain_first, plain_second)
        audio_seconds = seconds * num_clips
        rows.append({"clip_s": seconds, "clips": num_clips, "output_tokens_per_clip": max_tokens,
                     "transcription_rtfx": audio_seconds / plain, "with_words_rtfx": audio_seconds / aligned,
                     "words_cost_ratio": aligned / plain, "words_per_clip": timed / num_clips,
                     "aligner_passes": len(passes), "pieces_per_pass": float(np.mean(passes))})
    config = {"preset": preset, "clip_seconds": clip_seconds, "num_clips": num_clips,
              "tokens_per_second": tokens_per_second, "dtype": str(dtype),
              "engine_options": {k: v for k, v in asdict(engine_options).items() if k not in ("model", "dtype")}}
    return rows, write_results("alignment", device, config, rows, out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "0.6b"], default="tiny",
                        help="the ASR model's and the aligner's shapes (0.6b: Qwen3-ASR-0.6B and "
                             "Qwen3-ForcedAligner-0.6B)")
    parser.add_argument("--clip-seconds", type=float, nargs="+", default=[5.0, 20.0, 60.0])
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--tokens-per-second", type=float, default=4.0)
    parser.add_argument("--work-dir", default="/tmp/qasr-bench", help="where the random checkpoints are written")
    add_output_arguments(parser)
    EngineConfig.add_cli_args(parser, exclude=("model", "aligner_model"))


def main(args: argparse.Namespace) -> int:
    rows, path = run(args.preset, args.clip_seconds, args.num_clips, args.tokens_per_second,
                     EngineConfig.from_cli_args(args), Path(args.work_dir), args.out_dir)
    print_table(rows)
    print(f"results: {path}")
    return 0
