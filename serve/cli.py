import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from engine.config import EngineConfig

FORMATS = ("json", "text", "srt", "vtt")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Every EngineConfig field becomes a --dashed-flag."""
    hints = typing.get_type_hints(EngineConfig)
    for field in dataclasses.fields(EngineConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _without_none(hints[field.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=kind, default=field.default, dest=field.name)


def _without_none(annotation: object) -> type:
    if isinstance(annotation, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation  # type: ignore[return-value]


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig)})


def transcribe(args: argparse.Namespace) -> int:
    from engine import ASR, SamplingParams
    from serve.formats import render

    asr = ASR(**dataclasses.asdict(engine_config(args)))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    results = asr.transcribe(args.files, language=args.language, context=args.context, sampling_params=params,
                             use_tqdm=not args.quiet)
    for file, result in zip(args.files, results):
        text = render(result, args.format)
        if args.output_dir:
            out = Path(args.output_dir) / (Path(file).stem + "." + ("txt" if args.format == "text" else args.format))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        else:
            if len(args.files) > 1 and args.format != "json":
                sys.stdout.write(f"== {file}\n")
            sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qasr", description="Qwen3-ASR serving engine")
    commands = parser.add_subparsers(dest="command", required=True)
    offline = commands.add_parser("transcribe", help="transcribe audio files offline, batched")
    offline.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, opus, m4a, webm, ...)")
    offline.add_argument("--language", default=None, help="force a language (name or ISO code); default: detect")
    offline.add_argument("--context", default="", help="context text (hotwords) for the system prompt")
    offline.add_argument("--format", choices=FORMATS, default="text")
    offline.add_argument("--output-dir", default=None, help="write one file per input instead of stdout")
    offline.add_argument("--temperature", type=float, default=0.0)
    offline.add_argument("--max-tokens", type=int, default=512)
    offline.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_options(offline)
    offline.set_defaults(run=transcribe)

    bench = commands.add_parser("bench", help="benchmarks: print a table and write JSON under benchmarks/results")
    benches = bench.add_subparsers(dest="benchmark", required=True)
    from benchmarks import kernels, throughput

    for name, module in {"throughput": throughput, "kernels": kernels}.items():
        sub = benches.add_parser(name, help=module.__doc__.strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"qasr: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
