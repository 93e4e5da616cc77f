"""Online serving: many clients at once against servers' /v1/audio/transcriptions (qasr, vLLM, sglang-omni, the
transformers baseline).

    qasr bench serve --launch                                   # a qasr server on the bundled demo model
    qasr bench serve --launch --model Qwen/Qwen3-ASR-0.6B --max-num-seqs 128
    qasr bench serve --base-url http://gpu-box:8000 --concurrency 1 8 32 --stream --plot serve.png
    qasr bench serve --base-url http://127.0.0.1:8001 --launch  # the baseline (first) against qasr (second)
    qasr bench serve --launch --stream --slo ttft=1 --find-max-rate --gate wer<=0.05 --gate rtfx>=20

Each level (a `--concurrency` value, or a `--request-rate` value when several are given) is one row per server: the
same requests (the dataset's clips, shuffled by `--seed`, repeated to `--num-requests`) arrive as a Poisson process
at the request rate with at most `concurrency` in flight. Several servers (`--base-url` repeated, a launched one
last) get the same requests level by level, one after another, so drift on the machine hits them alike; every
server's rows are divided by the first server's. Latency runs from sending the request to the last byte of the
answer; TTFT (only with `--stream`) to the first non-empty text delta; WER is against the dataset's text. With
`--slo`, each row says which share of requests met every objective (goodput), and `--find-max-rate` searches the
request rate each server sustains at `--goodput-target`. `--gate` makes the run fail when a row misses a bound.
A launched server shares this process (and its cores) with the client: for exact numbers on a small machine, run
`qasr serve` separately and point `--base-url` at it.
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
from tqdm import tqdm

from qasr.benchmarks.datasets import load_dataset
from qasr.benchmarks.heldout import HELDOUT
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.benchmarks.slo import Gate, check_gates, meets, parse_gate, parse_slo
from qasr.benchmarks.wer import corpus_wer

PERCENTILES = (50, 90, 95, 99)
RATIOS = ("requests_per_s", "rtfx", "p50_latency_s", "p99_latency_s", "p50_ttft_s", "goodput_requests_per_s")
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


@dataclass(frozen=True)
class Server:
    label: str  # its URL, or "qasr (launched)"
    url: str
    model: str | None  # sent with each request; None: the server's first /v1/models entry


@dataclass(frozen=True)
class Level:
    concurrency: int
    request_rate: float


def load_clips(folder: Path, num_requests: int, seed: int) -> list[Clip]:
    """`num_requests` clips of the dataset in `folder` (any layout `load_dataset` reads), shuffled, repeated if
    short."""
    utterances = load_dataset(folder)
    order = np.random.default_rng(seed).permutation(len(utterances))
    clips: dict[int, Clip] = {}
    for i in order[:num_requests]:
        utterance = utterances[i]
        seconds = utterance.seconds or _duration(utterance.path)
        clips[i] = Clip(utterance.path.name, utterance.path.read_bytes(), utterance.text, float(seconds))
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
                  seed: int, progress: str | None = None) -> tuple[list[Outcome], float]:
    """Sends every clip, arrivals Poisson at `request_rate` (inf: all at once), at most `concurrency` in flight;
    `progress` names a progress bar on stderr."""
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, len(clips)) if math.isfinite(request_rate) \
        else np.zeros(len(clips))
    slots = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(clips), desc=progress, unit="req", leave=False, file=sys.stderr, disable=progress is None)

    async def limited(clip: Clip) -> Outcome:
        async with slots:
            outcome = await transcribe(session, base_url, model, clip, stream, language)
        bar.update()
        return outcome

    start = time.perf_counter()
    tasks = []
    for clip, gap in zip(clips, gaps):
        tasks.append(asyncio.create_task(limited(clip)))
        if gap > 0:
            await asyncio.sleep(gap)
    outcomes = await asyncio.gather(*tasks)
    bar.close()
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


def summarize(server: str, level: Level, outcomes: list[Outcome], wall: float, before: dict | None,
              after: dict | None, slos: dict[str, float]) -> dict:
    done = [o for o in outcomes if o.error is None]
    latencies = np.array([o.latency for o in done])
    ttfts = np.array([o.ttft for o in done if o.ttft is not None])
    audio = sum(o.clip.seconds for o in done)
    row = {"server": server, "concurrency": level.concurrency,
           "request_rate": "inf" if math.isinf(level.request_rate) else level.request_rate,
           "completed": len(done), "failed": len(outcomes) - len(done), "audio_s": audio, "wall_s": wall,
           "requests_per_s": len(done) / wall, "rtfx": audio / wall, "mean_latency_s": _mean(latencies)}
    row |= {f"p{p}_latency_s": _percentile(latencies, p) for p in PERCENTILES}
    row["mean_ttft_s"] = _mean(ttfts)
    row |= {f"p{p}_ttft_s": _percentile(ttfts, p) for p in PERCENTILES}
    row["mean_rtf"] = _mean(np.array([o.latency / o.clip.seconds for o in done]))
    spoken = any(o.clip.text.strip() for o in done)  # clips of silence or noise have no words to score
    row["wer"] = corpus_wer([o.clip.text for o in done], [o.text for o in done]) if spoken else None
    good = sum(meets(slos, o.latency, o.ttft, o.clip.seconds) for o in done) if slos else None
    row["goodput"] = good / len(outcomes) if good is not None and outcomes else None
    row["goodput_requests_per_s"] = good / wall if good is not None else None
    for key in SERVER_COUNTERS:
        row[key] = after[key] - before[key] if before is not None and after is not None else None
    tokens = row["server_generation_tokens"]
    row["server_output_tokens_per_s"] = tokens / wall if tokens is not None else None
    return row


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _percentile(values: np.ndarray, p: float) -> float | None:
    return float(np.percentile(values, p)) if len(values) else None


MEASURES = tuple(summarize("", Level(1, math.inf), [], 1.0, None, None, {}))  # what rows and gates can name


@dataclass
class Results:
    rows: list[dict]
    rtfs: dict[tuple[str, float], list[float]]  # (server, level value) -> each request's RTF, for the figure
    models: dict[str, str | None]
    versions: dict[str, str | None]
    max_rates: list[dict]


async def benchmark(args: argparse.Namespace, servers: list[Server], clips: list[Clip]) -> Results:
    """Every level against every server in turn, then (with --find-max-rate) each server's sustained rate."""
    connector = aiohttp.TCPConnector(limit=0)  # the default pool of 100 would cap the concurrency
    slos = dict(args.slo)
    x_key = level_key(args)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=3600)) as session:
        models, versions = {}, {}
        for server in servers:
            models[server.label] = server.model or await _first_model(session, server.url)
            warmup = await transcribe(session, server.url, models[server.label], clips[0], args.stream, args.language)
            if warmup.error is not None:
                raise ValueError(f"the warm-up request to {server.url} failed: {warmup.error}")
            versions[server.label] = await _version(session, server.url)
        results = Results([], {}, models, versions, [])
        for level in levels(args):
            for server in servers:
                model = models[server.label]
                before = await scrape_counters(session, server.url)
                outcomes, wall = await run_row(session, server.url, model, clips, level.concurrency,
                                               level.request_rate, args.stream, args.language, args.seed,
                                               progress=f"{server.label} {x_key}={getattr(level, x_key):g}")
                await asyncio.sleep(0.1)  # a streamed answer's metrics are counted just after its last byte is sent
                row = summarize(server.label, level, outcomes, wall, before, await scrape_counters(session, server.url),
                                slos)
                results.rows.append(row)
                results.rtfs[(server.label, getattr(level, x_key))] = [o.latency / o.clip.seconds for o in outcomes
                                                                        if o.error is None]
                for error in sorted({o.error for o in outcomes if o.error is not None})[:3]:
                    print(f"{server.label} {x_key} {getattr(level, x_key):g}: failed: {error}", file=sys.stderr)
        if args.find_max_rate:
            for server in servers:
                results.max_rates.append(await find_max_rate(session, server, models[server.label], clips, args,
                                                              slos))
        return results


def levels(args: argparse.Namespace) -> list[Level]:
    """One level per concurrency at the request rate; or, given several rates, one per rate at the highest
    concurrency."""
    if len(args.request_rate) > 1:
        return [Level(max(args.concurrency), rate) for rate in args.request_rate]
    return [Level(concurrency, args.request_rate[0]) for concurrency in args.concurrency]


def level_key(args: argparse.Namespace) -> str:
    return "request_rate" if len(args.request_rate) > 1 else "concurrency"


async def find_max_rate(session: aiohttp.ClientSession, server: Server, model: str | None, clips: list[Clip],
                        args: argparse.Namespace, slos: dict[str, float]) -> dict:
    """The highest Poisson request rate at which the server keeps `--goodput-target` of requests within the SLOs:
    doubled from `--search-start-rate` until it fails, then bisected, within `--max-search-s`. No client-side cap
    on requests in flight: a request waits in the server's queue, where its latency shows it, not in the client's."""
    concurrency = len(clips)
    deadline = time.monotonic() + args.max_search_s
    probes: list[dict] = []

    async def goodput(rate: float) -> float:
        outcomes, wall = await run_row(session, server.url, model, clips, concurrency, rate, args.stream,
                                       args.language, args.seed, progress=f"{server.label} search {rate:.3g}/s")
        share = sum(o.error is None and meets(slos, o.latency, o.ttft, o.clip.seconds) for o in outcomes) / len(clips)
        probes.append({"request_rate": rate, "goodput": share, "wall_s": wall})
        return share

    passing, failing, rate = 0.0, math.inf, args.search_start_rate
    while math.isinf(failing) and rate <= args.search_max_rate and time.monotonic() < deadline:  # double until a
        if await goodput(rate) >= args.goodput_target:                                           # rate fails
            passing, rate = rate, rate * 2
        else:
            failing = rate
    for _ in range(args.search_steps):  # then halve the gap
        if math.isinf(failing) or time.monotonic() >= deadline:
            break
        middle = (passing + failing) / 2 if passing else failing / 2
        if await goodput(middle) >= args.goodput_target:
            passing = middle
        else:
            failing = middle
    return {"server": server.label, "max_rate": passing or None, "first_failing_rate": None if math.isinf(failing)
            else failing, "concurrency": concurrency, "goodput_target": args.goodput_target,
            "slos": slos, "probes": probes, "bounded_by_time": time.monotonic() >= deadline}


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
    parser.add_argument("--base-url", action="append", default=[], help="a server (repeatable: servers compared "
                        "side by side, the first the reference); default http://127.0.0.1:8000 unless --launch")
    parser.add_argument("--model", action="append", default=[], help="model name sent with each request, once for "
                        "every server or once per --base-url in their order; default: each server's first "
                        "/v1/models entry (after --launch, --model is the checkpoint to serve)")
    parser.add_argument("--label", action="append", default=[], help="a name for each --base-url, in their order, "
                        "in the tables and the figure (default: the URL)")
    parser.add_argument("--dataset", default=str(HELDOUT), help="a folder with manifest.jsonl (file, text, "
                        "seconds), a LibriSpeech-style tree (*.trans.txt), or audio files with .txt sidecars")
    parser.add_argument("--num-requests", type=int, default=250)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64],
                        help="most requests in flight; one row per value")
    parser.add_argument("--request-rate", type=float, nargs="+", default=[math.inf],
                        help="mean arrivals per second, Poisson (inf: all at once); several values: one row per "
                        "rate, at the highest --concurrency")
    parser.add_argument("--stream", action="store_true", help="stream the answers and measure time to first token")
    parser.add_argument("--language", default=None, help="language sent with each request; default: detect")
    parser.add_argument("--seed", type=int, default=0, help="clip order and arrival times")
    parser.add_argument("--slo", type=parse_slo, action="append", default=[], metavar="MEASURE=BOUND",
                        help="an objective per request: ttft=S, latency=S or rtf=R (repeatable); rows report the "
                        "share meeting all (goodput)")
    parser.add_argument("--find-max-rate", action="store_true", help="search each server's highest request rate "
                        "with --goodput-target of requests within the --slo bounds")
    parser.add_argument("--goodput-target", type=float, default=0.99)
    parser.add_argument("--search-start-rate", type=float, default=1.0, help="requests/s the search starts at")
    parser.add_argument("--search-steps", type=int, default=5, help="bisection steps after the doubling")
    parser.add_argument("--search-max-rate", type=float, default=10_000.0, help="requests/s the doubling stops at")
    parser.add_argument("--max-search-s", type=float, default=300.0, help="time the search may take per server")
    parser.add_argument("--gate", type=parse_gate, action="append", default=[], metavar="MEASURE<=BOUND",
                        help="a bound every row of the last server (the one under test) must keep, e.g. wer<=0.03, "
                        "rtfx>=80, p99_latency<=2, max_rate>=10 (repeatable); a miss exits 1")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write the figure here")
    add_output_arguments(parser)
    parser.add_argument("--launch", nargs=argparse.REMAINDER, default=None, metavar="ENGINE_OPTION",
                        help="start a qasr server in this process with the engine options that follow (qasr serve's "
                             "--model, --max-num-seqs, ...; none: the bundled demo model), compared last, and stop "
                             "it at the end; must come last")


def servers_of(args: argparse.Namespace, launched: LaunchedServer | None) -> list[Server]:
    urls = [url.rstrip("/") for url in args.base_url] or ([] if launched else ["http://127.0.0.1:8000"])
    if len(args.model) not in (0, 1, len(urls)):
        raise ValueError(f"--model: give one for every server or one per --base-url ({len(urls)}), not "
                         f"{len(args.model)}")
    models = args.model * len(urls) if len(args.model) == 1 else args.model or [None] * len(urls)
    if args.label and len(args.label) != len(urls):
        raise ValueError(f"--label: give one per --base-url ({len(urls)}), not {len(args.label)}")
    labels = args.label or urls
    if len(set(labels)) != len(labels):
        raise ValueError("--label: the servers' names must differ")
    servers = [Server(label, url, model) for label, url, model in zip(labels, urls, models)]
    if launched is not None:
        servers.append(Server("qasr (launched)", launched.url, None))
    return servers


def check_arguments(args: argparse.Namespace) -> None:
    if args.num_requests < 1 or min(args.concurrency) < 1 or not all(rate > 0 for rate in args.request_rate):
        raise ValueError("--num-requests, --concurrency and --request-rate must be positive")
    if args.find_max_rate and not args.slo:
        raise ValueError("--find-max-rate needs at least one --slo")
    if not 0 < args.goodput_target <= 1:
        raise ValueError("--goodput-target must be in (0, 1]")
    for gate in args.gate:
        gate.key((*MEASURES, "max_rate"))  # a misspelt gate fails now, not after the run


def main(args: argparse.Namespace) -> int:
    check_arguments(args)
    clips = load_clips(Path(args.dataset), args.num_requests, args.seed)
    server = LaunchedServer(args.launch) if args.launch is not None else None
    try:
        servers = servers_of(args, server)
        results = asyncio.run(benchmark(args, servers, clips))
    finally:
        if server is not None:
            server.close()
    rows, x_key = results.rows, level_key(args)
    for label in dict.fromkeys(row["server"] for row in rows):  # one column per level: rows are too wide as rows
        mine = [row for row in rows if row["server"] == label]
        print(f"\n{label}")
        print_table([{"metric": key, **{f"{x_key}={row[x_key]}": row[key] for row in mine}} for key in mine[0]
                     if key not in ("server", "concurrency", "request_rate")])
    ratios = ratio_rows(rows, x_key)
    if ratios:
        print(f"\nratios to {rows[0]['server']} (same requests, same levels)")
        print_table(ratios)
    for found in results.max_rates:
        print(f"{found['server']}: sustains {found['max_rate']} req/s with {found['goodput_target']:.0%} of requests "
              f"within {found['slos']} (concurrency {found['concurrency']})")
    subject = [row for row in rows if row["server"] == rows[-1]["server"]]
    subject += [{"server": found["server"], "max_rate": found["max_rate"]} for found in results.max_rates
                if found["server"] == rows[-1]["server"]]
    gates = gate_outcomes(args.gate, subject)
    for outcome in gates:
        if not outcome["passed"]:
            print(f"gate failed: {outcome['gate']} at {x_key} {outcome[x_key]} of {outcome['server']}: "
                  f"{outcome['measure']} = {outcome['value']}", file=sys.stderr)
    config = {"servers": [{"label": s.label, "url": s.url, "model": results.models[s.label],
                           "version": results.versions[s.label]} for s in servers],
              "dataset": str(args.dataset), "num_requests": args.num_requests,
              "audio_s_per_row": sum(c.seconds for c in clips), "concurrency": args.concurrency,
              "request_rate": ["inf" if math.isinf(r) else r for r in args.request_rate], "stream": args.stream,
              "language": args.language, "seed": args.seed, "slos": dict(args.slo),
              "launched": asdict(server.config) if server is not None else None,
              "ratios": ratios, "max_rates": results.max_rates, "gates": gates}
    config["model"] = results.models[servers[-1].label]
    if args.plot is not None:
        from qasr.benchmarks.plots import plot

        print(f"figure: {plot(rows, results.rtfs, x_key, args.plot, plot_title(servers, args))}")
    # a remote server's device is unknown here: it is named by its URL
    device = server.device if server else f"unknown: remote server at {servers[-1].url}"
    print(f"results: {write_results('serving', device, config, rows, args.out_dir)}")
    return 1 if any(not outcome["passed"] for outcome in gates) else 0


def gate_outcomes(gates: list[Gate], subject: list[dict]) -> list[dict]:
    rows = [row for row in subject if "max_rate" not in row]
    outcomes = check_gates([gate for gate in gates if gate.name != "max_rate"], rows)
    searched = [row for row in subject if "max_rate" in row]
    for gate in gates:
        if gate.name == "max_rate":
            if not searched:
                raise ValueError(f"--gate {gate.text}: needs --find-max-rate")
            outcomes.append({"gate": gate.text, "server": searched[0]["server"], "concurrency": None,
                             "request_rate": None, "measure": "max_rate", "value": searched[0]["max_rate"],
                             "passed": gate.passes(searched[0]["max_rate"])})
    return outcomes


def ratio_rows(rows: list[dict], x_key: str) -> list[dict]:
    """Each other server's measures divided by the first server's at the same level (WER as a difference)."""
    reference = rows[0]["server"]
    base = {row[x_key]: row for row in rows if row["server"] == reference}
    ratios = []
    for row in rows:
        if row["server"] == reference:
            continue
        first = base[row[x_key]]
        ratio = {"server": row["server"], x_key: row[x_key]}
        for key in RATIOS:
            ratio[f"{key}_ratio"] = row[key] / first[key] if row[key] is not None and first[key] else None
        ratio["wer_minus_reference"] = row["wer"] - first["wer"] if None not in (row["wer"], first["wer"]) else None
        ratios.append(ratio)
    return ratios


def plot_title(servers: list[Server], args: argparse.Namespace) -> str:
    dataset = Path(args.dataset).name
    return (f"qasr bench serve: {' vs '.join(s.label for s in servers)}; {args.num_requests} requests of {dataset}"
            f"{', streamed' if args.stream else ''}")
