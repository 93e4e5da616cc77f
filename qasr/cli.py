"""The `qasr` command. A subcommand's module, and torch with it, is imported only once that subcommand is parsed,
so `qasr --help` and `qasr serve --help` answer at once."""

import argparse
import importlib
import os
import sys
from typing import Any

# name -> (module with add_arguments(parser) and main(args) -> exit code, one-line help)
COMMANDS = {
    "transcribe": ("qasr.serve.transcribe", "transcribe audio files offline, batched"),
    "serve": ("qasr.serve.cli", "serve the OpenAI transcription API and DashScope-style file transcription tasks "
                                "over HTTP"),
    "bench": ("qasr.benchmarks.cli", "benchmarks: print a table and write JSON to ./benchmarks-results"),
}


class CommandParser(argparse.ArgumentParser):
    """A parser whose arguments come from `module`, imported the first time this parser parses anything (a
    subcommand's parser parses only when that subcommand was chosen). Subparsers inherit the class, so a
    subcommand's module can add lazy subcommands of its own."""

    def __init__(self, *args: Any, module: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.module = module

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        if self.module is not None:
            module, self.module = importlib.import_module(self.module), None
            module.add_arguments(self)
            if hasattr(module, "main"):
                self.set_defaults(run=module.main)
        return super().parse_known_args(args, namespace)


def add_commands(parser: argparse.ArgumentParser, commands: dict[str, tuple[str, str]], dest: str) -> None:
    subparsers = parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    for name, (module, help_text) in commands.items():
        subparsers.add_parser(name, help=help_text, description=help_text, module=module)


def build_parser() -> CommandParser:
    parser = CommandParser(prog="qasr", description="qasr: a serving engine for the Qwen3-ASR speech recognition "
                                                    "models")
    add_commands(parser, COMMANDS, "command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"qasr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qasr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # whoever read the output stopped (`| head`): nothing more to say, and nothing to flush into the pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
