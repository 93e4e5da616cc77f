"""`qasr serve`: the HTTP server for one engine, until Ctrl-C or SIGTERM."""

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
import urllib.parse

from qasr.engine.config import EngineConfig
from qasr.serve.options import ServerOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ServerOptions.add_cli_args(parser)
    EngineConfig.add_cli_args(parser)


def main(args: argparse.Namespace) -> int:
    from qasr.engine import AsyncEngine
    from qasr.serve.app import create_app, serve_forever
    from qasr.serve.auth import open_server_warning
    from qasr.serve.connections import raise_open_file_limit
    from qasr.serve.log_limit import limit_repeats
    from qasr.serve.state import STATE

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `kill -USR1`: every thread's stack to stderr, for a server that hangs (a drain that never ends, a stuck engine)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    limit_repeats()
    raise_open_file_limit()
    options, config = ServerOptions.from_cli_args(args), EngineConfig.from_cli_args(args)
    print(f"qasr: loading {config.model or 'the bundled demo model'} ...", file=sys.stderr, flush=True)
    engine = AsyncEngine(config)
    if engine.engine.aligner_path is not None:
        print(f"qasr: word timestamps by the forced aligner {engine.engine.aligner_path}", file=sys.stderr,
              flush=True)
    app = create_app(engine, options)  # from here on the app's cleanup shuts the engine down
    if warning := open_server_warning(options.host, app[STATE].keys):
        logging.getLogger("qasr.serve").warning(warning)

    def ready(url: str) -> None:
        names = ", ".join(app[STATE].model_names)
        print(f"qasr: serving {names} on {url} (OpenAI API under {url}/v1, DashScope file transcription under "
              f"{url}/api/v1, metrics at {url}/metrics; tasks in {without_password(options.task_db)}); Ctrl-C stops",
              file=sys.stderr, flush=True)

    try:
        asyncio.run(serve_forever(app, options.host, options.port, ready))
    except OSError as error:  # the address is taken or cannot be bound
        print(f"qasr: error: cannot listen on {options.host}:{options.port}: {error}", file=sys.stderr)
        return 1
    print("qasr: stopped", file=sys.stderr)
    return 0


def without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
