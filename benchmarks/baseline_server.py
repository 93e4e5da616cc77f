"""`qasr bench baseline-server`: the plain transformers Qwen3-ASR model behind the same OpenAI route, one batch at a
time: what a team would write in an afternoon, so that

    qasr bench baseline-server --port 8001 &
    qasr bench serve --base-url http://127.0.0.1:8001 --launch

measures qasr against it on any machine, the CPU included (the second server's rows are divided by the first's).

Requests wait in a queue; one thread takes up to `--max-batch-size` of them (1 by default: one request at a time),
runs `Qwen3ASRForConditionalGeneration.generate` on them greedily and answers them all. Audio is decoded by the same
code as qasr's (`load_audio`), so decoding costs both servers alike. No streaming of its own: a streamed request
gets the whole text as one delta when it is done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from aiohttp import web

ASR_TEXT = "<asr_text>"


@dataclass
class Job:
    samples: np.ndarray
    language: str | None
    result: Future = field(default_factory=Future)


class Baseline:
    """The transformers model and its processor, and the one thread that runs them."""

    def __init__(self, model: str | None, max_batch_size: int, max_new_tokens: int):
        from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        with hf_layout(model) as path:
            self.processor = Qwen3ASRProcessor.from_pretrained(path)
            self.model = Qwen3ASRForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        self.max_batch_size = max_batch_size
        self.max_new_tokens = max_new_tokens
        self.jobs: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._serve, name="baseline-generate", daemon=True).start()

    def _serve(self) -> None:
        while True:
            batch = [self.jobs.get()]
            while len(batch) < self.max_batch_size and not self.jobs.empty():
                batch.append(self.jobs.get_nowait())
            try:
                texts = self.generate([job.samples for job in batch], [job.language for job in batch])
            except Exception as error:  # noqa: BLE001 -- every waiting client hears of it
                for job in batch:
                    job.result.set_exception(error)
                continue
            for job, text in zip(batch, texts):
                job.result.set_result(text)

    def generate(self, clips: list[np.ndarray], languages: list[str | None]) -> list[str]:
        forced = languages if any(languages) else None
        inputs = self.processor.apply_transcription_request(clips, language=forced).to(self.model.device)
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [text.split(ASR_TEXT, 1)[-1].strip() for text in texts]


@contextlib.contextmanager
def hf_layout(model: str | None) -> Iterator[str]:
    """A checkpoint transformers loads: the bundled demo model (or any original-layout folder) converted into a
    temporary folder that is removed once loaded; a Hugging Face id or an -hf folder as it is."""
    from qasr.engine.demo import demo_model_path
    from qasr.engine.hf_conversion import convert_to_hf
    from qasr.engine.model_config import load_model_config

    folder = Path(model) if model is not None else demo_model_path()
    if not folder.is_dir() or load_model_config(folder).layout != "original":
        yield str(model)
        return
    with tempfile.TemporaryDirectory(prefix="qasr-baseline-hf-") as converted:
        convert_to_hf(folder, Path(converted))
        yield converted


def create_app(baseline: Baseline, model_name: str) -> web.Application:
    from qasr.engine.audio import load_audio

    async def transcribe(request: web.Request) -> web.StreamResponse:
        fields, audio = {}, None
        async for part in await request.multipart():
            if part.name == "file":
                audio = await part.read()
            else:
                fields[part.name] = await part.text()
        if audio is None:
            return web.json_response({"error": {"message": "no file", "type": "invalid_request_error"}}, status=400)
        if fields.get("model", model_name) != model_name:
            return web.json_response({"error": {"message": f"no model {fields['model']!r}",
                                                "type": "invalid_request_error"}}, status=404)
        try:
            samples = await asyncio.to_thread(load_audio, audio)
        except Exception as error:  # noqa: BLE001 -- the baseline keeps its errors plain
            return web.json_response({"error": {"message": str(error), "type": "invalid_request_error"}}, status=400)
        job = Job(samples, fields.get("language") or None)
        baseline.jobs.put(job)
        text = await asyncio.wrap_future(job.result)
        if fields.get("stream") == "true":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in ({"type": "transcript.text.delta", "delta": text}, {"type": "transcript.text.done",
                                                                              "text": text}):
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            return response
        if fields.get("response_format") == "text":
            return web.Response(text=text + "\n")
        return web.json_response({"text": text})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model_name, "object": "model",
                                                              "owned_by": "transformers"}]})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint folder (either layout) or Hugging Face id; "
                        "default: the bundled demo model")
    parser.add_argument("--served-model-name", default=None, help="default: qasr-demo for the demo model, else "
                        "--model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0: any free one")
    parser.add_argument("--max-batch-size", type=int, default=1, help="requests per generate call (1: one at a "
                        "time)")
    parser.add_argument("--max-new-tokens", type=int, default=512)


def main(args: argparse.Namespace) -> int:
    from qasr.serve.state import default_model_name

    if args.max_batch_size < 1:
        raise SystemExit("--max-batch-size must be at least 1")
    baseline = Baseline(args.model, args.max_batch_size, args.max_new_tokens)
    name = args.served_model_name or default_model_name(args.model)

    async def serve() -> None:
        runner = web.AppRunner(create_app(baseline, name))
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"qasr bench baseline-server: serving {name} (transformers, batches of up to {args.max_batch_size}) "
              f"on http://{host}:{port}", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
