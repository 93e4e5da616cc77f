import asyncio
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, replace

from qasr.engine.config import EngineConfig
from qasr.engine.host_memory import release_freed_memory
from qasr.engine.llm_engine import LLMEngine
from qasr.engine.outputs import RequestOutput, Transcription
from qasr.engine.request import TranscriptionRequest

# while busy, freed heap pages go back to the OS at most this often: a trim costs a few milliseconds and the pages it
# returns fault back in as they are reused (dear on some machines: a CPU encoder pass on fresh pages took twice as
# long), so not every step
BUSY_TRIM_INTERVAL_S = 1.0
# when the work runs out they go back once it has stayed out this long: a client sending one request after another
# leaves gaps of milliseconds, and a trim in each made its next request fault its working memory back in
IDLE_TRIM_DELAY_S = 0.5


@dataclass(slots=True)
class _Submit:
    request: TranscriptionRequest  # named: request_id is set
    sink: "asyncio.Queue[RequestOutput | BaseException]"
    loop: asyncio.AbstractEventLoop

    @property
    def request_id(self) -> str:
        return self.request.request_id  # type: ignore[return-value]


@dataclass(slots=True)
class _Abort:
    request_id: str
    submit: _Submit | None = None  # only this submission's request is aborted, not a namesake


class AsyncEngine:
    """The engine for servers: one background thread runs the step loop; callers await text deltas.

    The engine thread owns LLMEngine; the event loop only exchanges messages with it.
    """

    def __init__(self, config: EngineConfig):
        if config.cpu_threads is None:  # on the CPU, a core of its own for the event loop and audio decoding
            config = replace(config, cpu_threads=max(1, available_cores() - 1))
        self.commands: queue.Queue[_Submit | _Abort | None] = queue.Queue()
        self.sinks: dict[str, _Submit] = {}
        self.request_ids = (f"areq-{i}" for i in itertools.count())
        self.error: BaseException | None = None
        self.crashed = False  # the engine thread died of an error, not of a shutdown
        self.lock = threading.Lock()  # a submission either reaches a live engine or sees why it stopped
        # The engine is built on the thread that runs it: on the CPU, torch work on one thread runs 2-3x slower
        # once another thread has started the parallel runtime first (two OpenMP teams contending for the cores).
        built: Future[LLMEngine] = Future()
        self.thread = threading.Thread(target=self._run, args=(config, built), name="qasr-engine", daemon=True)
        self.thread.start()
        self.engine = built.result()  # what building raised, raised here

    @property
    def is_running(self) -> bool:
        """False once the engine thread has stopped (shut down or failed): nothing submitted will run."""
        return self.error is None and self.thread.is_alive()

    @property
    def has_aligner(self) -> bool:
        """A forced aligner is loaded: requests may ask for word timestamps."""
        return self.engine.has_aligner

    @property
    def num_unfinished(self) -> int:
        return len(self.sinks)

    async def stream(self, request: TranscriptionRequest) -> AsyncIterator[RequestOutput]:
        """Yields text deltas; the last output has finished=True and the result. Cancelling aborts.

        The first output (an empty delta) says the engine accepted the request; a request it refuses (too long
        for max_model_len, a special token in the context) raises instead, before anything else is yielded."""
        if request.request_id is None:
            request = replace(request, request_id=next(self.request_ids))
        request_id = request.request_id
        sink: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        submit = _Submit(request, sink, asyncio.get_running_loop())
        with self.lock:
            if self.error is not None:
                raise RuntimeError("the engine has stopped") from self.error
            self.commands.put(submit)
        finished = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.commands.put(_Abort(request_id, submit))

    async def transcribe(self, request: TranscriptionRequest) -> Transcription:
        async for output in self.stream(request):
            if output.finished and output.result is not None:
                return output.result
        raise RuntimeError("the engine ended the request without a result")

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's tokenizer (safe from any thread: the tokenizer only reads its tables)."""
        return self.engine.input_processor.count_tokens(text)

    def abort(self, request_id: str) -> None:
        self.commands.put(_Abort(request_id))

    def shutdown(self) -> None:
        """Stops the engine thread; requests still in flight fail with an error instead of hanging."""
        self.commands.put(None)
        self.thread.join(timeout=30)

    def _run(self, config: EngineConfig, built: "Future[LLMEngine]") -> None:
        try:
            self.engine = LLMEngine(config)
        except BaseException as failure:
            self.error = failure
            built.set_exception(failure)
            return
        built.set_result(self.engine)
        if self.engine.core.device.type == "cuda":
            import torch

            torch.cuda.set_device(self.engine.core.device)
        try:
            self._loop()
            error: BaseException = RuntimeError("the engine was shut down")
        except BaseException as failure:  # the thread must never die silently: fail everyone instead
            error = failure
            self.crashed = True
        with self.lock:
            self.error = error
            # callers handle Exceptions: a fatal BaseException (the thread's end) reaches them as a RuntimeError
            self._fail_all(error if isinstance(error, Exception) else RuntimeError(f"the engine stopped: {error!r}"))

    def _loop(self) -> None:
        busy, trimmed = False, time.monotonic()
        while True:
            block = not self.engine.has_unfinished
            if not block and not busy:  # work again after a wait: its first busy second starts now
                trimmed = time.monotonic()
            if not block and time.monotonic() - trimmed > BUSY_TRIM_INTERVAL_S:
                release_freed_memory()
                trimmed = time.monotonic()
            # the work just ran out: what its peak took goes back unless more comes within IDLE_TRIM_DELAY_S
            trim_when_idle = block and busy
            busy = not block
            mail = Mail()
            try:
                while True:
                    command = self.commands.get(block=block, timeout=IDLE_TRIM_DELAY_S if trim_when_idle else None)
                    block = trim_when_idle = False
                    if command is None:
                        return
                    self._apply(command, mail)
            except queue.Empty:
                if trim_when_idle:
                    release_freed_memory()
                    continue  # and wait on, for as long as it takes
            mail.send()
            if not self.engine.has_unfinished:
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # a failed step fails the requests in flight, not the engine
                self._fail_in_flight(RuntimeError(f"engine step failed: {error!r}"))
                continue
            for output in outputs:
                self._deliver(output, mail)
            mail.send()

    def _apply(self, command: _Submit | _Abort, mail: "Mail") -> None:
        if isinstance(command, _Abort):
            if command.submit is None or self.sinks.get(command.request_id) is command.submit:
                self.sinks.pop(command.request_id, None)
                self.engine.abort(command.request_id)
            return
        try:
            self.engine.add_request(command.request)
        except Exception as error:
            mail.add(command, error)
            return
        self.sinks[command.request_id] = command
        mail.add(command, RequestOutput(command.request_id, "", finished=False))  # accepted

    def _deliver(self, output: RequestOutput, mail: "Mail") -> None:
        submit = self.sinks.get(output.request_id)
        if submit is None:
            return
        if output.finished:
            del self.sinks[output.request_id]
        mail.add(submit, output)

    def _fail_in_flight(self, error: BaseException) -> None:
        mail = Mail()
        for request_id in list(self.sinks):
            try:
                self.engine.abort(request_id)
            finally:
                mail.add(self.sinks.pop(request_id), error)
        mail.send()

    def _fail_all(self, error: BaseException) -> None:
        self._fail_in_flight(error)
        mail = Mail()
        while True:  # submissions nobody will run
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Submit):
                mail.add(command, error)
        mail.send()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Mail:
    """What one round of the engine thread sends to the callers' event loops, posted with one wake-up per loop:
    each wake-up is a write to the loop's self-pipe, a system call, and a step can answer hundreds of requests."""

    def __init__(self) -> None:
        self.batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}

    def add(self, submit: _Submit, item: RequestOutput | BaseException) -> None:
        self.batches.setdefault(submit.loop, []).append((submit.sink, item))

    def send(self) -> None:
        for loop, items in self.batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the caller's event loop is closed: nobody is listening
                pass
        self.batches = {}


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for sink, item in items:
        sink.put_nowait(item)
