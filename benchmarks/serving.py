"""Online serving: many clients at once against a server's /v1/audio/transcriptions (qasr, vLLM, sglang-omni).

    qasr bench serve --launch                                   # a qasr server on the bundled demo model
    qasr bench serve --launch --model Qwen/Qwen3-ASR-0.6B --max-num-seqs 128
    qasr bench serve --base-url http://gpu-box:8000 --concurrency 1 8 32 --stream

Each `--concurrency` value is one row: the same requests (manifest clips, shuffled by `--seed`, repeated to
`--num-requests`) arrive as a Poisson process at `--request-rate` with at most that many in flight. Latency runs
from sending the request to the last byte of the answer; TTFT (only with `--stream`) to the first non-empty text
delta; WER is against the manifest's `text`. A launched server shares this process (and its cores) with the client:
for exact numbers on a small machine, run `qasr serve` separately and point `--base-url` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
import torch

from qasr.benchmarks.heldout import HELDOUT
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.benchmarks.wer import corpus_wer

PERCENTILES = (50, 90, 95, 99)
# counters summed over their labels, qasr's and vLLM's names: row key -> metric sample names
SERVER_COUNTERS = {
    "server_prompt_tokens": ("qasr_prompt_tokens_total", "vllm:prompt_tokens_total"),
    "server_generation_tokens": ("qasr_generation_tokens_total", "vllm:generation_tokens_total"),
    "server_preemptions": ("qasr_num_preemptions_total", "vllm:num_preemptions_total"),
}


@dataclass(frozen=True)
class Clip:
    name: str
    audio: bytes
    text: str
    seconds: float


@dataclass
class Outcome:
    clip: Clip
    latency: float = 0.0
    ttft: float | None = None
    text: str = ""
    error: str | None = None


def load_clips(folder: Path, num_requests: int, seed: int) -> list[Clip]:
    """`num_requests` clips from folder/manifest.jsonl (file, text, optional seconds), shuffled, repeated if short."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{folder / 'manifest.jsonl'} lists no clips")
    order = np.random.default_rng(seed).permutation(len(rows))
    clips: dict[int, Clip] = {}
    for i in order[:num_requests]:
        row = rows[i]
        path = folder / row["file"]
        seconds = row.get("seconds") or _duration(path)
        clips[i] = Clip(row["file"], path.read_bytes(), row["text"], float(seconds))
    return [clips[order[k % len(order)]] for k in range(num_requests)]


def _duration(path: Path) -> float:
    from qasr.engine.audio import load_audio

    return len(load_audio(path)) / 16000


async def transcribe(session: aiohttp.ClientSession, base_url: str, model: str | None, clip: Clip, stream: bool,
                     language: str | None) -> Outcome:
    form = aiohttp.FormData()
    form.add_field("file", clip.audio, filename=Path(clip.name).name, content_type="application/octet-stream")
    form.add_field("response_format", "json")
    for name, value in (("model", model), ("language", language), ("stream", "true" if stream else None)):
        if value is not None:
            form.add_field(name, value)
    outcome = Outcome(clip)
    start = time.perf_counter()
    try:
        async with session.post(base_url + "/v1/audio/transcriptions", data=form) as response:
            if response.status != 200:
                outcome.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            elif stream:
                await _read_events(response, outcome, start)
            else:
                outcome.text = (await response.json())["text"]
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as error:
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.latency = time.perf_counter() - start
    return outcome


async def _read_events(response: aiohttp.ClientResponse, outcome: Outcome, start: float) -> None:
    """OpenAI's `transcript.text.delta`/`.done` events (qasr, sglang-omni) or vLLM's chat-completion-shaped
    chunks; the text is the done event's, else the deltas joined."""
    deltas, done = [], None
    async for line in response.content:
        data = line.decode().strip().removeprefix("data:").strip()
        if not line.startswith(b"data:") or not data or data == "[DONE]":
            continue
        event = json.loads(data)
        if "error" in event:
            outcome.error = f"stream error: {event['error']}"
            return
        if event.get("type") == "transcript.text.done":
            done = event.get("text")
            continue
        delta = event.get("delta") if "type" in event else _chat_delta(event)
        if delta:
            if outcome.ttft is None:
                outcome.ttft = time.perf_counter() - start
            deltas.append(delta)
    outcome.text = done if done is not None else "".join(deltas)


def _chat_delta(event: dict) -> str | None:
    choices = event.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content")


async def run_row(session: aiohttp.ClientSession, base_url: str, model: str | None, clips: list[Clip],
                  concurrency: int, request_rate: float, stream: bool, language: str | None,
                  seed: int) -> tuple[list[Outcome], float]:
    """Sends every clip, arrivals Poisson at `request_rate` (inf: all at once), at most `concurrency` in flight."""
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, len(clips)) if math.isfinite(request_rate) \
        else np.zeros(len(clips))
    slots = asyncio.Semaphore(concurrency)

    async def limited(clip: Clip) -> Outcome:
        async with slots:
            return await transcribe(session, base_url, model, clip, stream, language)

    start = time.perf_counter()
    tasks = []
    for clip, gap in zip(clips, gaps):
        tasks.append(asyncio.create_task(limited(clip)))
        if gap > 0:
            await asyncio.sleep(gap)
    outcomes = await asyncio.gather(*tasks)
    return outcomes, time.perf_counter() - start


async def scrape_counters(session: aiohttp.ClientSession, base_url: str) -> dict[str, float] | None:
    """SERVER_COUNTERS from /metrics, or None if the server has no Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with session.get(base_url + "/metrics") as response:
            if response.status != 200:
                return None
            text = await response.text()
    except aiohttp.ClientError:
        return None
    totals = dict.fromkeys(SERVER_COUNTERS, 0.0)
    names = {name: key for key, names in SERVER_COUNTERS.items() for name in names}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                totals[names[sample.name]] += sample.value
    return totals


def summarize(concurrency: int, outcomes: list[Outcome], wall: float, before: dict | None,
              after: dict | None) -> dict:
    done = [o for o in outcomes if o.error is None]
    latencies = np.array([o.latency for o in done])
    ttfts = np.array([o.ttft for o in done if o.ttft is not None])
    audio = sum(o.clip.seconds for o in done)
    row = {"concurrency": concurrency, "completed": len(done), "failed": len(outcomes) - len(done),
           "audio_s": audio, "wall_s": wall, "requests_per_s": len(done) / wall, "rtfx": audio / wall,
           "mean_latency_s": _mean(latencies)}
    row |= {f"p{p}_latency_s": _percentile(latencies, p) for p in PERCENTILES}
    row["mean_ttft_s"] = _mean(ttfts)
    row |= {f"p{p}_ttft_s": _percentile(ttfts, p) for p in PERCENTILES}
    row["mean_rtf"] = _mean(np.array([o.latency / o.clip.seconds for o in done]))
    row["wer"] = corpus_wer([o.clip.text for o in done], [o.text for o in done]) if done else None
    for key in SERVER_COUNTERS:
        row[key] = after[key] - before[key] if before is not None and after is not None else None
    tokens = row["server_generation_tokens"]
    row["server_output_tokens_per_s"] = tokens / wall if tokens is not None else None
    return row


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _percentile(values: np.ndarray, p: float) -> float | None:
    return float(np.percentile(values, p)) if len(values) else None


async def benchmark(args: argparse.Namespace, base_url: str, clips: list[Clip]) -> tuple[list[dict], dict]:
    """The rows, and what the server says about itself (model, version)."""
    connector = aiohttp.TCPConnector(limit=0)  # the default pool of 100 would cap the concurrency
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=3600)) as session:
        model = args.model or await _first_model(session, base_url)
        warmup = await transcribe(session, base_url, model, clips[0], args.stream, args.language)
        if warmup.error is not None:
            raise ValueError(f"the warm-up request to {base_url} failed: {warmup.error}")
        rows = []
        for concurrency in args.concurrency:
            before = await scrape_counters(session, base_url)
            outcomes, wall = await run_row(session, base_url, model, clips, concurrency, args.request_rate,
                                           args.stream, args.language, args.seed)
            await asyncio.sleep(0.1)  # a streamed answer's metrics are counted just after its last byte is sent
            rows.append(summarize(concurrency, outcomes, wall, before, await scrape_counters(session, base_url)))
            for error in sorted({o.error for o in outcomes if o.error is not None})[:3]:
                print(f"concurrency {concurrency}: failed: {error}", file=sys.stderr)
        return rows, {"model": model, "server_version": await _version(session, base_url)}


async def _first_model(session: aiohttp.ClientSession, base_url: str) -> str | None:
    try:
        async with session.get(base_url + "/v1/models") as response:
            return (await response.json())["data"][0]["id"] if response.status == 200 else None
    except (aiohttp.ClientError, ValueError, KeyError, IndexError):
        return None


async def _version(session: aiohttp.ClientSession, base_url: str) -> str | None:
    try:
        async with session.get(base_url + "/version") as response:
            return (await response.json()).get("version") if response.status == 200 else None
    except (aiohttp.ClientError, ValueError, AttributeError):
        return None


class LaunchedServer:
    """A qasr server on a free loopback port, its event loop on a thread of this process."""

    def __init__(self, engine_args: list[str]):
        from qasr.engine import AsyncEngine, EngineConfig
        from qasr.serve.app import create_app, start
        from qasr.serve.options import ServerOptions

        parser = argparse.ArgumentParser(prog="qasr bench serve --launch")
        EngineConfig.add_cli_args(parser)
        self.config = EngineConfig.from_cli_args(parser.parse_args(engine_args))
        print(f"qasr bench serve: loading {self.config.model or 'the bundled demo model'} ...", file=sys.stderr)
        self.engine = AsyncEngine(self.config)
        app = create_app(self.engine, ServerOptions(task_db=":memory:"))  # its cleanup shuts the engine down
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(start(app, "127.0.0.1", 0), self.loop).result()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    @property
    def device(self) -> torch.device:
        return self.engine.engine.core.device

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (ignored with --launch)")
    parser.add_argument("--model", default=None, help="model name sent with each request; default: the server's "
                        "first /v1/models entry (after --launch, --model is the checkpoint to serve)")
    parser.add_argument("--dataset", default=str(HELDOUT), help="folder with manifest.jsonl (file, text, seconds)")
    parser.add_argument("--num-requests", type=int, default=250)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64],
                        help="most requests in flight; one row per value")
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="mean arrivals per second, Poisson (inf: all at once)")
    parser.add_argument("--stream", action="store_true", help="stream the answers and measure time to first token")
    parser.add_argument("--language", default=None, help="language sent with each request; default: detect")
    parser.add_argument("--seed", type=int, default=0, help="clip order and arrival times")
    add_output_arguments(parser)
    parser.add_argument("--launch", nargs=argparse.REMAINDER, default=None, metavar="ENGINE_OPTION",
                        help="start a qasr server in this process with the engine options that follow (qasr serve's "
                             "--model, --max-num-seqs, ...; none: the bundled demo model) and stop it at the end; "
                             "must come last")


def main(args: argparse.Namespace) -> int:
    if args.num_requests < 1 or min(args.concurrency) < 1 or not args.request_rate > 0:
        raise ValueError("--num-requests, --concurrency and --request-rate must be positive")
    clips = load_clips(Path(args.dataset), args.num_requests, args.seed)
    server = LaunchedServer(args.launch) if args.launch is not None else None
    base_url = server.url if server is not None else args.base_url.rstrip("/")
    try:
        rows, about = asyncio.run(benchmark(args, base_url, clips))
    finally:
        if server is not None:
            server.close()
    config = {"base_url": base_url, **about, "dataset": str(args.dataset), "num_requests": args.num_requests,
              "audio_s_per_row": sum(c.seconds for c in clips), "concurrency": args.concurrency,
              "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate, "stream": args.stream,
              "language": args.language, "seed": args.seed,
              "launched": asdict(server.config) if server is not None else None}
    # one column per concurrency: the rows are too wide to print as rows
    print_table([{"metric": key, **{f"c={r['concurrency']}": r[key] for r in rows}} for key in rows[0]][1:])
    # a remote server's device is unknown here: it is named by its URL
    device = server.device if server else f"unknown: remote server at {base_url}"
    path = write_results("serving", device, config, rows, args.out_dir)
    print(f"results: {path}")
    return 0
