"""Runs file-transcription tasks: claims PENDING ones from the store, fetches, decodes, transcribes, stores results."""

import asyncio
import contextlib
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import av
import numpy as np

from qasr.engine import AsyncEngine, Transcription, TranscriptionRequest
from qasr.engine.audio import SAMPLE_RATE, AudioError, AudioTooLongError, load_audio
from qasr.engine.words import can_align
from qasr.serve.budget import AudioBudget, AudioClaim, ByteBudget
from qasr.serve.fetch import Fetcher, FetchError
from qasr.serve.formats import to_filetrans_transcript
from qasr.serve.metrics import Metrics
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import FAILED, SUCCEEDED, SqlTaskStore, Task, TaskRequest

logger = logging.getLogger("qasr.tasks")

T = TypeVar("T")
POLL_SECONDS = 1.0  # how soon a task submitted to another replica is noticed; our own submissions wake us at once


@dataclass(slots=True)
class DecodedFile:
    container: str | None  # e.g. "wav", "ogg"; None if the probe could not tell
    codec: str | None  # e.g. "pcm_s16le", "opus"
    sample_rate: int | None  # the file's own rate
    num_channels: int | None
    channels: list[np.ndarray]  # the requested channels, each 16 kHz mono float32


class TaskWorker:
    """Claims up to max_running_tasks tasks at a time under its own name, renews their leases while they run, and
    hands back its tasks to PENDING when stopped; every file and channel of every task runs through the engine at
    once, so the engine batches them."""

    def __init__(self, store: SqlTaskStore, engine: AsyncEngine, options: ServerOptions, metrics: Metrics,
                 audio_pool: ThreadPoolExecutor, audio_budget: AudioBudget):
        self.store = store
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.audio_pool = audio_pool
        self.audio_budget = audio_budget  # shared with the uploads; tasks are counted in it, never refused
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, asyncio.Task] = {}  # claimed and not yet finished (or given up)
        self.finishing: set[str] = set()  # of those, the ones whose final status is being written
        self.claiming = True  # off while the server drains: it finishes what it has and takes nothing new
        self.wake = asyncio.Event()
        self.loop_task: asyncio.Task | None = None
        self.fetcher: Fetcher | None = None

    async def start(self) -> None:
        self.fetcher = Fetcher(self.options.max_fetch_bytes, self.options.fetch_timeout_s,
                               self.options.allow_private_urls, ByteBudget(self.options.max_fetch_bytes_in_flight),
                               self.options.allow_url_hosts)
        self.loop_task = asyncio.create_task(self._loop(), name="qasr-task-worker")

    async def stop(self) -> None:
        """Stops claiming, abandons the tasks in flight (cancelling aborts their engine requests), lets a finish
        already being written land, and puts every task still RUNNING under this owner back to PENDING, so the next
        server to start runs them."""
        if self.loop_task is not None:
            self.loop_task.cancel()
            await asyncio.gather(self.loop_task, return_exceptions=True)
        for task_id, task in self.running.items():
            if task_id not in self.finishing:
                task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        # every task, not just self.running: a claim the cancel interrupted still commits on its thread. The store's
        # single write thread runs this after that claim.
        try:
            await self.store.run(self.store.release_owner, self.owner)
        except Exception:  # the database is gone: the leases run out instead
            logger.exception("could not hand back this server's tasks")
        if self.fetcher is not None:
            await self.fetcher.close()

    def wake_up(self) -> None:
        self.wake.set()

    async def _loop(self) -> None:
        housekeeping_due = 0.0
        while True:
            self.wake.clear()
            try:
                if time.monotonic() >= housekeeping_due:
                    await self._housekeeping()
                    housekeeping_due = time.monotonic() + self.options.task_lease_s / 3
                free = self.options.max_running_tasks - len(self.running)
                # while the server holds all the audio it may, new tasks wait in the store (for any replica)
                if free > 0 and self.claiming and self.engine.is_running and not self.audio_budget.full:
                    for task in await self.store.run(self.store.claim, self.owner, free, self.options.task_lease_s):
                        self.running[task.task_id] = asyncio.create_task(self._run(task))
            except Exception:  # e.g. the database stayed locked: try again on the next round
                logger.exception("the task worker's round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)

    async def _housekeeping(self) -> None:
        if self.running:
            renewing = list(self.running)
            owned = await self.store.run(self.store.renew, self.owner, renewing, self.options.task_lease_s)
            for task_id in set(renewing) - owned:
                # the lease ran out (this server stalled) and the task was requeued, maybe to another replica:
                # stop spending the engine on it; its finish could not land anyway
                if task_id in self.running and task_id not in self.finishing:
                    logger.warning("task %s: lost its lease; abandoning it", task_id)
                    self.running[task_id].cancel()
        failed, requeued = await self.store.run(self.store.requeue_expired)
        for task in failed:
            logger.warning("task %s failed: %s", task.task_id, task.message)
            self.metrics.observe_task(task)
        if failed or requeued:
            logger.warning("%d tasks' leases ran out (the replica running them stopped): %d back to PENDING, %d "
                           "failed", len(failed) + requeued, requeued, len(failed))
            self.metrics.lease_expiries.inc(len(failed) + requeued)
        await self.store.run(self.store.purge, time.time() - self.options.task_ttl_hours * 3600)

    async def _run(self, task: Task) -> None:
        try:
            try:
                files = await gather_or_cancel(*(self._file(task.request, url) for url in task.request.file_urls))
                task.results = [entry for entry, _ in files]
                task.audio_seconds = sum(seconds for _, seconds in files)
                failures = [entry for entry in task.results if entry["status"] == FAILED]
                task.status = FAILED if len(failures) == len(files) else SUCCEEDED
                if task.status == FAILED:
                    task.code, task.message = failures[0]["code"], failures[0]["message"]
            except Exception as error:
                if self.engine.crashed:  # maybe of this task's audio: the attempt counts (three, and it fails)
                    if failed := await self.store.run(self.store.interrupt, self.owner, task.task_id):
                        logger.warning("task %s failed: %s", task.task_id, failed.message)
                        self.metrics.observe_task(failed)
                    return
                if not self.engine.is_running:  # shut down (a drain): not the task's fault, nor an attempt
                    await self.store.run(self.store.release, self.owner, [task.task_id])
                    return
                logger.exception("task %s failed", task.task_id)
                task.status, task.code = FAILED, "InternalError"
                task.message = f"The server failed while processing the task: {type(error).__name__}."
            task.end_time = time.time()
            self.finishing.add(task.task_id)  # from here on stop() waits for the finish instead of cancelling it
            if await self.store.run(self.store.finish, task):
                self.metrics.observe_task(task)
            else:
                logger.warning("task %s was taken over by another worker before it finished here", task.task_id)
        finally:
            self.finishing.discard(task.task_id)
            self.running.pop(task.task_id, None)
            self.wake.set()

    async def _file(self, request: TaskRequest, url: str) -> tuple[dict, float]:
        """One file's entry of the task's results and the seconds of audio it billed."""
        assert self.fetcher is not None
        audio = self.audio_budget.claim(refusable=False)  # held until the file's channels are transcribed
        try:
            async with self.fetcher.download(url) as data:
                decoded = await asyncio.get_running_loop().run_in_executor(
                    self.audio_pool, decode, data, request.channels, self.options.max_audio_seconds, audio)
                del data  # the file's bytes go with their room in the budget
            results = await gather_or_cancel(*(self._transcribe(samples, request) for samples in decoded.channels))
        except FetchError as error:
            return _failure(url, error.code, error.message), 0.0
        except AudioTooLongError as error:
            return _failure(url, "FILE_TOO_LONG", f"The audio is too long: {error}."), 0.0
        except AudioError as error:
            return _failure(url, "FILE_DECODE_FAILED", f"Could not read the audio file: {error}."), 0.0
        except ValueError as error:  # the engine refused the request, e.g. too long for max_model_len
            return _failure(url, "FILE_TRANSCRIBE_FAILED", f"Could not transcribe the audio: {error}."), 0.0
        finally:
            audio.release()
        entry = {"file_url": url, "status": SUCCEEDED,
                 "document": document(url, decoded, request.channels, results, request.enable_words)}
        if not any(result.text for result in results):
            entry["code"] = "SUCCESS_WITH_NO_VALID_FRAGMENT"
        return entry, sum(result.duration for result in results)

    async def _transcribe(self, samples: np.ndarray, request: TaskRequest) -> Transcription:
        """With an aligner loaded, sentences follow the timed words (unless the forced language is one it cannot
        time); a task asking for words on a replica without one fails its files, as another replica stored it."""
        if request.enable_words and not self.engine.has_aligner:
            raise ValueError("enable_words needs a forced aligner, and this replica has none (--aligner-model)")
        align = request.enable_words or (self.engine.has_aligner and
                                         (request.language is None or can_align(request.language)))
        result = await self.engine.transcribe(TranscriptionRequest(samples, language=request.language,
                                                                   word_timestamps=align, stream=False))
        self.metrics.observe_transcription(result)  # each channel once, as it finishes
        return result


async def gather_or_cancel(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """asyncio.gather, but the first failure cancels the rest (gather leaves them running: downloads, budget and
    engine requests of a task already given up)."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def decode(data: bytes, channels: list[int], max_seconds: float, claim: AudioClaim) -> DecodedFile:
    """Runs on the audio pool: the probe reads only the header; each requested channel is decoded on its own."""
    container = codec = sample_rate = num_channels = None
    with contextlib.suppress(Exception), av.open(io.BytesIO(data)) as file:
        container = file.format.name.split(",")[0]
        stream = next((s for s in file.streams if s.type == "audio"), None)
        if stream is not None:
            context = stream.codec_context
            codec, sample_rate, num_channels = context.name, context.sample_rate, context.channels
    samples = [load_audio(data, channel=channel, max_seconds=max_seconds, on_decoded=claim) for channel in channels]
    return DecodedFile(container, codec, sample_rate, num_channels, samples)


def document(url: str, decoded: DecodedFile, channels: list[int], results: list[Transcription],
             words: bool = False) -> dict:
    """The result file a finished task's transcription_url serves: DashScope's Qwen filetrans fields (audio_info,
    transcripts) and Paraformer's (properties, content_duration_in_milliseconds), which do not collide."""
    duration_ms = round(len(decoded.channels[0]) / SAMPLE_RATE * 1000)
    return {
        "file_url": url,
        "properties": {"audio_format": decoded.codec, "channels": list(range(decoded.num_channels or 1)),
                       "original_sampling_rate": decoded.sample_rate,
                       "original_duration_in_milliseconds": duration_ms},
        "audio_info": {"format": decoded.container, "sample_rate": decoded.sample_rate},
        "transcripts": [to_filetrans_transcript(channel, result, words) for channel, result in zip(channels, results)],
    }


def _failure(url: str, code: str, message: str) -> dict:
    return {"file_url": url, "status": FAILED, "code": code, "message": message}
