import argparse
import asyncio
import dataclasses
import logging
import sys
import types
import typing
import urllib.parse
from pathlib import Path

from engine.config import EngineConfig
from serve.formats import FORMATS
from serve.state import STATE, ServerOptions


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
        text = render(result, args.format, temperature=args.temperature)
        if args.output_dir:
            suffix = {"text": "txt", "verbose_json": "json"}.get(args.format, args.format)
            out = Path(args.output_dir) / (Path(file).stem + "." + suffix)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        else:
            if len(args.files) > 1 and not args.format.endswith("json"):
                sys.stdout.write(f"== {file}\n")
            sys.stdout.write(text)
    return 0


def serve(args: argparse.Namespace) -> int:
    from engine import AsyncEngine
    from serve.app import create_app, serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServerOptions(served_model_names=args.served_model_name or [], max_upload_mb=args.max_upload_mb,
                            upload_timeout_s=args.upload_timeout_s, sse_keepalive_s=args.sse_keepalive_s,
                            max_prompt_chars=args.max_prompt_chars,
                            max_queued_requests=args.max_queued_requests, task_db=args.task_db,
                            max_running_tasks=args.max_running_tasks, max_fetch_mb=args.max_fetch_mb,
                            fetch_timeout_s=args.fetch_timeout_s, allow_private_urls=args.allow_private_urls,
                            max_audio_seconds=args.max_audio_seconds, task_lease_s=args.task_lease_s,
                            task_ttl_hours=args.task_ttl_hours, public_url=args.public_url,
                            enable_task_listing=args.enable_task_listing)
    config = engine_config(args)
    print(f"qasr: loading {config.model or 'the bundled demo model'} ...", file=sys.stderr, flush=True)
    engine = AsyncEngine(config)
    app = create_app(engine, options)  # from here on the app's cleanup shuts the engine down

    def ready(url: str) -> None:
        names = ", ".join(app[STATE].model_names)
        print(f"qasr: serving {names} on {url} (OpenAI API under {url}/v1, DashScope file transcription under "
              f"{url}/api/v1, metrics at {url}/metrics; tasks in {_without_password(options.task_db)}); Ctrl-C stops",
              file=sys.stderr, flush=True)

    try:
        asyncio.run(serve_forever(app, args.host, args.port, ready))
    except OSError as error:  # the address is taken or cannot be bound
        print(f"qasr: error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print("qasr: stopped", file=sys.stderr)
    return 0


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


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

    defaults = ServerOptions()
    server = commands.add_parser("serve", help="serve the OpenAI-compatible transcription API over HTTP")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--served-model-name", nargs="+", default=None,
                        help="model name(s) clients may send; default: derived from --model (qasr-demo for the "
                             "bundled demo model)")
    server.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb,
                        help="largest audio upload; bigger ones get 413")
    server.add_argument("--upload-timeout-s", type=float, default=defaults.upload_timeout_s,
                        help="a request body that takes longer to arrive gets 408")
    server.add_argument("--sse-keepalive-s", type=float, default=defaults.sse_keepalive_s,
                        help="a streamed response waiting for its first token sends an SSE comment this often")
    server.add_argument("--max-prompt-chars", type=int, default=defaults.max_prompt_chars,
                        help="longest prompt (context) a transcription request may send; longer gets 400")
    server.add_argument("--max-queued-requests", type=int, default=defaults.max_queued_requests,
                        help="requests that may wait beyond the engine's --max-num-seqs; more get 429")
    tasks = server.add_argument_group("DashScope-style file transcription tasks")
    tasks.add_argument("--task-db", default=defaults.task_db,
                       help="task store: a SQLite file (replicas on one host may share it) or a postgresql:// URL "
                            "(replicas on several hosts)")
    tasks.add_argument("--max-running-tasks", type=int, default=defaults.max_running_tasks,
                       help="tasks this server runs at once (0: accept tasks but leave them to other replicas)")
    tasks.add_argument("--max-fetch-mb", type=float, default=defaults.max_fetch_mb,
                       help="largest file_url download")
    tasks.add_argument("--fetch-timeout-s", type=float, default=defaults.fetch_timeout_s,
                       help="time limit of one download")
    tasks.add_argument("--allow-private-urls", action="store_true",
                       help="let file_url reach private, loopback, link-local and reserved addresses (off: SSRF guard)")
    tasks.add_argument("--max-audio-seconds", type=float, default=defaults.max_audio_seconds,
                       help="longest audio: a longer upload is a 400, a longer task file (per channel) fails its task")
    tasks.add_argument("--task-lease-s", type=float, default=defaults.task_lease_s,
                       help="a RUNNING task whose server stops renewing it for this long runs again")
    tasks.add_argument("--task-ttl-hours", type=float, default=defaults.task_ttl_hours,
                       help="finished tasks and their results are deleted after this")
    tasks.add_argument("--public-url", default=None,
                       help="base URL of result links (default: from the request's Host and X-Forwarded-* headers)")
    tasks.add_argument("--enable-task-listing", action="store_true",
                       help="serve GET /api/v1/tasks, which lists every client's tasks (off: 403)")
    add_engine_options(server)
    server.set_defaults(run=serve)

    bench = commands.add_parser("bench", help="benchmarks: print a table and write JSON under benchmarks/results")
    benches = bench.add_subparsers(dest="benchmark", required=True)
    from benchmarks import kernels, serving, throughput

    for name, module in {"throughput": throughput, "kernels": kernels, "serve": serving}.items():
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
