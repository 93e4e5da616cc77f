"""`qasr transcribe`: audio files in, transcripts out (stdout or one file each), batched by the engine."""

import argparse
import sys
from pathlib import Path

from qasr.engine.config import EngineConfig
from qasr.serve.formats import FORMATS, render

SUFFIXES = {"text": "txt", "verbose_json": "json"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, opus, m4a, webm, ...)")
    parser.add_argument("--language", default=None, help="force a language (name or ISO code); default: detect")
    parser.add_argument("--context", default="", help="context text (hotwords) for the system prompt")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--output-dir", default=None, help="write one file per input instead of stdout")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--word-timestamps", action="store_true",
                        help="time each word with the forced aligner (--aligner-model): words in json and "
                             "verbose_json, sentence-sized cues in srt and vtt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    EngineConfig.add_cli_args(parser)


def main(args: argparse.Namespace) -> int:
    from qasr.engine import ASR, SamplingParams

    asr = ASR.from_config(EngineConfig.from_cli_args(args))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    if args.word_timestamps and not args.aligner_model:
        raise SystemExit("qasr transcribe: --word-timestamps needs --aligner-model")
    results = asr.transcribe(args.files, language=args.language, context=args.context, sampling_params=params,
                             use_tqdm=not args.quiet, word_timestamps=args.word_timestamps)
    for file, result in zip(args.files, results):
        text = render(result, args.format, temperature=args.temperature, words=args.word_timestamps)
        if args.output_dir:
            out = Path(args.output_dir) / (Path(file).stem + "." + SUFFIXES.get(args.format, args.format))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        else:
            if len(args.files) > 1 and not args.format.endswith("json"):
                sys.stdout.write(f"== {file}\n")
            sys.stdout.write(text)
    return 0
