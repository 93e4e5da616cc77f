"""`qasr transcribe`: audio files in, transcripts out (stdout or one file each), batched by the engine."""

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from qasr.engine.config import EngineConfig
from qasr.serve.formats import FORMATS, render

if TYPE_CHECKING:
    import numpy as np

SUFFIXES = {"text": "txt", "verbose_json": "json"}
WINDOW_SECONDS = 3600.0  # decoded audio a run holds at once (230 MB at 16 kHz), however many files it is given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, opus, m4a, webm, ...)")
    parser.add_argument("--language", default=None, help="force a language (name or ISO code); default: detect")
    parser.add_argument("--context", default="", help="context text (hotwords) for the system prompt")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--output-dir", default=None, help="write one file per input instead of stdout")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--word-timestamps", action="store_true",
                        help="time each word with the forced aligner (--aligner-model; the demo model has "
                             "one): words in json and verbose_json, sentence-sized cues in srt and vtt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    EngineConfig.add_cli_args(parser)


def main(args: argparse.Namespace) -> int:
    """Writes what it could transcribe: a file that cannot be decoded is named on stderr, the others still go
    through, and the exit status is 1 (2 when none could be decoded)."""
    from qasr.engine import ASR, SamplingParams

    outputs = output_paths(args.files, args.output_dir, args.format)  # before the model loads: a mistake costs nothing
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    asr, failures = None, []
    for window in decoded_windows(args.files, failures):
        asr = asr or ASR.from_config(EngineConfig.from_cli_args(args))
        results = asr.transcribe([audio for _, audio in window], language=args.language, context=args.context,
                                 sampling_params=params, use_tqdm=not args.quiet,
                                 word_timestamps=args.word_timestamps)
        for (file, _), result in zip(window, results):
            text = render(result, args.format, temperature=args.temperature, words=args.word_timestamps)
            if outputs:
                outputs[file].write_text(text, encoding="utf-8")
            else:
                if len(args.files) > 1 and not args.format.endswith("json"):
                    sys.stdout.write(f"== {file}\n")
                sys.stdout.write(text)
    if asr is None:
        raise ValueError("no input could be decoded")
    return 1 if failures else 0


def decoded_windows(files: list[str], failures: list[str]) -> Iterator[list[tuple[str, "np.ndarray"]]]:
    """The files decoded, in windows of about WINDOW_SECONDS of audio: memory holds one window, not every file, and
    each window's transcripts are written before the next is decoded. A file that cannot be decoded is named on
    stderr and added to `failures`."""
    from qasr.engine.audio import SAMPLE_RATE, AudioError, load_audio

    window: list[tuple[str, np.ndarray]] = []
    seconds = 0.0
    for file in files:
        try:
            audio = load_audio(file)
        except AudioError as error:
            print(f"qasr transcribe: {file}: {error}", file=sys.stderr)
            failures.append(file)
            continue
        window.append((file, audio))
        seconds += len(audio) / SAMPLE_RATE
        if seconds >= WINDOW_SECONDS:
            yield window
            window, seconds = [], 0.0
    if window:
        yield window


def output_paths(files: list[str], output_dir: str | None, fmt: str) -> dict[str, Path]:
    """Each input's output file under `output_dir` ({} without one), the folder made; a ValueError where two
    inputs would write the same file or the folder cannot be made."""
    if output_dir is None:
        return {}
    folder = Path(output_dir)
    paths = {file: folder / f"{Path(file).stem}.{SUFFIXES.get(fmt, fmt)}" for file in files}
    writers: dict[Path, list[str]] = {}
    for file, path in paths.items():
        writers.setdefault(path, []).append(file)
    for path, same in writers.items():
        if len(same) > 1:
            raise ValueError(f"{' and '.join(same)} would all be written to {path}: rename them, or transcribe them "
                             "into separate --output-dir folders")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output-dir {output_dir}: {error.strerror or error}") from error
    return paths
