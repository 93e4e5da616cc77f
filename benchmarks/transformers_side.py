"""transformers' side of `qasr bench throughput`: its model and processor, and the timed runs the rows compare with.

On the CPU it runs in a process of its own, as a user runs it: a qasr CPU engine sets glibc's heap thresholds for its
process (engine.host_memory), and in one process each ran on the heap the other left (glibc sizes its thresholds by
what was freed before; page faults are dear on a virtual machine), which measurably changed both (transformers' 5 s
row took 190 ms beside qasr and 150-175 ms alone, one morning). On a GPU it runs in the benchmark's process: the
device's memory is the allocator's, and a second process would hold a second CUDA context. Clips are named by
(seconds, seed), made on each side by synthetic_clip, so the two get the same audio without sending it across.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection

import torch

from qasr.benchmarks.workload import sync, synthetic_clip

HELDOUT_MAX_TOKENS = 256  # past the longest held-out transcript; both stop at the end of each


class TransformersSide:
    """The preset's checkpoint in transformers (and, for the held-out row, the demo model's baseline)."""

    def __init__(self, hf_path: str, dtype: torch.dtype, device: str):
        from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor

        self.device = torch.device(device)
        self.processor = Qwen3ASRProcessor.from_pretrained(hf_path)
        self.model = Qwen3ASRForConditionalGeneration.from_pretrained(hf_path, dtype=dtype).to(self.device).eval()
        self.baseline = None
        self.heldout_clips: list = []  # loaded with the baseline, on the first heldout() call

    def generate(self, clips: list[tuple[float, int]], max_tokens: int, batch_size: int) -> tuple[float, int]:
        """Seconds to transcribe `clips` (seconds, seed), `batch_size` at a time, each batch exactly `max_tokens`,
        and the batch size that took. Where a batch does not fit the GPU's memory (transformers' encoder holds every
        chunk's convolution output at once: some 24 GB for 128 clips of 30 s), the whole run is timed again at half
        the batch: transformers at the largest batch it can run."""
        audio = [synthetic_clip(seconds, seed) for seconds, seed in clips]
        while True:
            try:
                return self._timed(audio, max_tokens, batch_size), batch_size
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                torch.cuda.empty_cache()

    def _timed(self, audio: list, max_tokens: int, batch_size: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for i in range(0, len(audio), batch_size):
            inputs = self.processor.apply_transcription_request(audio[i:i + batch_size]).to(self.device)
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
            with torch.inference_mode():
                self.model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
        sync(self.device)
        return time.perf_counter() - start

    def heldout(self, batch_size: int, limit: int | None) -> tuple[float, list[str]]:
        """The demo model over the held-out set's first `limit` clips, `batch_size` at a time in the set's order,
        greedy to each transcript's end: (seconds, transcripts). The first call loads the clips and the model, and
        warms it; later calls take the same clips."""
        from qasr.benchmarks.baseline_server import Baseline
        from qasr.benchmarks.heldout import HELDOUT, read_manifest
        from qasr.engine.audio import load_audio

        if self.baseline is None:
            self.heldout_clips = [load_audio(str(HELDOUT / row["file"])) for row in read_manifest()[:limit]]
            self.baseline = Baseline(None, batch_size, HELDOUT_MAX_TOKENS)
            self.baseline.generate(self.heldout_clips[:1], [None])
        clips = self.heldout_clips
        sync(self.device)
        start = time.perf_counter()
        texts = [text for i in range(0, len(clips), batch_size)
                 for text in self.baseline.generate(clips[i:i + batch_size], [None] * len(clips[i:i + batch_size]))]
        sync(self.device)
        return time.perf_counter() - start, texts

    def close(self) -> None:
        """Nothing to stop: the model goes with the object."""


class TransformersProcess:
    """A TransformersSide in a child process; `generate` and `heldout` are called as on the object itself."""

    def __init__(self, hf_path: str, dtype: torch.dtype, device: str):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: none of this process's state
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, hf_path, dtype, device), daemon=True)
        self.process.start()
        child_end.close()
        self._answer()  # loaded

    def generate(self, clips: list[tuple[float, int]], max_tokens: int, batch_size: int) -> tuple[float, int]:
        return self._call("generate", clips, max_tokens, batch_size)

    def heldout(self, batch_size: int, limit: int | None) -> tuple[float, list[str]]:
        return self._call("heldout", batch_size, limit)

    def close(self) -> None:
        if self.process.is_alive():
            self.connection.send(None)
            self.process.join(timeout=30)

    def _call(self, method: str, *args: object):
        self.connection.send((method, args))
        return self._answer()

    def _answer(self):
        while not self.connection.poll(1.0):
            if not self.process.is_alive():  # killed (out of memory, say) before it could answer
                raise RuntimeError(f"the transformers process died (exit code {self.process.exitcode})")
        ok, value = self.connection.recv()
        if not ok:
            raise RuntimeError(f"the transformers process failed:\n{value}")
        return value


def _serve(connection: Connection, hf_path: str, dtype: torch.dtype, device: str) -> None:
    try:
        side = TransformersSide(hf_path, dtype, device)
    except Exception:  # noqa: BLE001 -- the parent reports it
        connection.send((False, traceback.format_exc()))
        return
    connection.send((True, None))
    while (call := connection.recv()) is not None:
        method, args = call
        try:
            connection.send((True, getattr(side, method)(*args)))
        except Exception:  # noqa: BLE001 -- the parent reports it
            connection.send((False, traceback.format_exc()))


def transformers_side(hf_path: str, dtype: torch.dtype, device: torch.device) -> TransformersSide | TransformersProcess:
    """A process of its own on the CPU, this process on a GPU (see the module's docstring)."""
    if device.type == "cpu":
        return TransformersProcess(hf_path, dtype, str(device))
    return TransformersSide(hf_path, dtype, str(device))
