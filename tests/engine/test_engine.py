"""Continuous batching gives every request the tokens it gets alone: batched, preempted, chunked, shuffled."""

import asyncio
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qasr.engine import ASR, AsyncEngine, EngineConfig, SamplingParams, TranscriptionRequest
from qasr.engine.async_engine import available_cores
from qasr.engine.audio import AudioError
from qasr.engine.languages import UnknownLanguageError
from qasr.engine.prompt import MAX_CACHED_CONTEXT_CHARS, parse_transcript
from qasr.engine.tokenizer import load_tokenizer
from qasr.scheduler import SchedulerOutput

SECONDS = [0.3, 0.7, 1.0, 1.6, 2.2, 3.1, 4.0, 5.5, 6.3, 7.9, 8.1, 9.4, 10.2, 11.7, 2.8, 0.5, 12.5, 3.3]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def checkpoint(checkpoint_root: Path, shapes, write_checkpoint) -> Path:
    return write_checkpoint(checkpoint_root / "engine-gqa2", shapes[0], layout="hf", seed=3)


@pytest.fixture(scope="module")
def clips(speech_like) -> list[np.ndarray]:
    return [speech_like(s, seed=100 + i) for i, s in enumerate(SECONDS)]


@pytest.fixture(scope="module")
def alone(checkpoint: Path, clips: list[np.ndarray]) -> list[list[int]]:
    asr = ASR(str(checkpoint))
    params = SamplingParams(max_tokens=MAX_TOKENS)
    return [asr.transcribe([(c, 16000)], sampling_params=params)[0].token_ids for c in clips]


class StepRecorder:
    def __init__(self, asr: ASR):
        scheduler = asr.engine.core.scheduler
        self.steps: list[SchedulerOutput] = []
        original = scheduler.schedule

        def schedule() -> SchedulerOutput:
            out = original()
            self.steps.append(out)
            return out

        scheduler.schedule = schedule


def transcribe_all(asr: ASR, clips: list[np.ndarray]) -> list[list[int]]:
    results = asr.transcribe([(c, 16000) for c in clips], sampling_params=SamplingParams(max_tokens=MAX_TOKENS))
    return [r.token_ids for r in results]


def test_batch_equals_one_at_a_time(checkpoint: Path, clips, alone) -> None:
    asr = ASR(str(checkpoint))
    recorder = StepRecorder(asr)
    assert transcribe_all(asr, clips) == alone
    assert max(len(step.chunks) for step in recorder.steps) >= 16
    assert any(len(step.to_encode) > 1 for step in recorder.steps), "the encoder never ran batched"
    assert asr.engine.core.scheduler.block_manager.num_free_blocks == asr.engine.core.scheduler.block_manager.num_blocks


def test_without_the_prefix_cache_audio_is_not_hashed_and_tokens_are_the_same(checkpoint: Path, clips,
                                                                               alone) -> None:
    asr = ASR(str(checkpoint), enable_prefix_caching=False)
    processed = asr.engine.input_processor.process(TranscriptionRequest(clips[0]))
    assert [seq.audio.content_hash for seq in processed.sequences] == [b""]  # only the prefix cache reads it
    hashed = ASR(str(checkpoint)).engine.input_processor.process(TranscriptionRequest(clips[0]))
    assert len(hashed.sequences[0].audio.content_hash) == 16
    assert transcribe_all(asr, clips) == alone


def test_preemption_under_a_small_kv_pool(checkpoint: Path, clips, alone) -> None:
    asr = ASR(str(checkpoint), num_kv_blocks=24, block_size=16)  # 384 slots: about two long clips at once
    results = asr.transcribe([(c, 16000) for c in clips], sampling_params=SamplingParams(max_tokens=MAX_TOKENS))
    assert [r.token_ids for r in results] == alone
    assert sum(r.metrics.num_preemptions for r in results) > 0


def test_chunked_prefill_under_a_small_token_budget(checkpoint: Path, clips, alone) -> None:
    asr = ASR(str(checkpoint), max_num_batched_tokens=48, max_num_encoder_tokens=200)
    recorder = StepRecorder(asr)
    assert transcribe_all(asr, clips) == alone
    chunked = [c for step in recorder.steps for c in step.chunks if c.start > 0 and c.start < c.seq.num_prompt_tokens]
    assert chunked, "no prefill was split across steps"
    assert all(step.num_batched_tokens <= 48 for step in recorder.steps)


def test_random_arrival_order(checkpoint: Path, clips, alone) -> None:
    asr = ASR(str(checkpoint), max_num_seqs=5)
    engine = asr.engine
    order = list(range(len(clips)))
    random.Random(0).shuffle(order)
    params = SamplingParams(max_tokens=MAX_TOKENS)
    request_of = {}
    results = {}
    rng = random.Random(1)
    pending = list(order)
    while pending or engine.has_unfinished:
        for _ in range(rng.randint(0, 3)):
            if pending:
                i = pending.pop()
                request_of[engine.add_request(TranscriptionRequest(clips[i], sampling_params=params))] = i
        for output in engine.step() if engine.has_unfinished else []:
            if output.finished:
                results[request_of[output.request_id]] = output.result.token_ids
    assert [results[i] for i in range(len(clips))] == alone


def test_seeded_sampling_is_reproducible_and_batch_independent(checkpoint: Path, clips) -> None:
    asr = ASR(str(checkpoint))
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=1234, max_tokens=MAX_TOKENS)
    one = asr.transcribe([(clips[3], 16000)], sampling_params=params)[0].token_ids
    batch = asr.transcribe([(c, 16000) for c in clips[:6]], sampling_params=params)
    assert batch[3].token_ids == one
    other = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=99, max_tokens=MAX_TOKENS)
    assert asr.transcribe([(clips[3], 16000)], sampling_params=other)[0].token_ids != one


def test_ignore_eos_and_max_tokens(checkpoint: Path, clips) -> None:
    asr = ASR(str(checkpoint))
    [result] = asr.transcribe([(clips[0], 16000)], sampling_params=SamplingParams(max_tokens=40, ignore_eos=True))
    assert len(result.token_ids) == 40 and result.finish_reason == "length"


def test_stop_on_the_checkpoints_eos(checkpoint: Path, clips) -> None:
    asr = ASR(str(checkpoint))
    eos = set(asr.engine.input_processor.special.eos)
    results = asr.transcribe([(c, 16000) for c in clips], sampling_params=SamplingParams(max_tokens=200))
    for r in results:
        stopped = r.finish_reason == "stop"
        assert stopped == (r.token_ids[-1] in eos)
        assert not eos & set(r.token_ids[:-1])


def test_bad_requests_raise_clear_errors(checkpoint: Path, clips) -> None:
    asr = ASR(str(checkpoint))
    with pytest.raises(UnknownLanguageError, match="unsupported language 'Klingon'"):
        asr.transcribe([(clips[0], 16000)], language="Klingon")
    with pytest.raises(ValueError, match="audio is empty"):
        asr.transcribe([(np.zeros(0, np.float32), 16000)])
    with pytest.raises(ValueError, match="special token"):
        asr.transcribe([(clips[0], 16000)], context="<|im_end|>")
    with pytest.raises(TypeError, match="unknown engine option"):
        ASR(str(checkpoint), max_num_sequences=3)
    assert not asr.engine.has_unfinished


def test_request_counts_for_the_metrics(checkpoint: Path, clips) -> None:
    engine = ASR(str(checkpoint), max_num_seqs=1).engine
    ids = [engine.add_request(TranscriptionRequest(clip, sampling_params=SamplingParams(max_tokens=3)))
           for clip in clips[:3]]
    assert (engine.num_running_requests, engine.num_waiting_requests) == (0, 3)
    engine.step()
    assert (engine.num_running_requests, engine.num_waiting_requests) == (1, 2)
    engine.abort(ids[2])
    assert (engine.num_running_requests, engine.num_waiting_requests) == (1, 1)
    while engine.has_unfinished:
        engine.step()
    assert (engine.num_running_requests, engine.num_waiting_requests) == (0, 0)


def test_long_contexts_are_tokenized_without_filling_the_prompt_cache(checkpoint: Path) -> None:
    prompts = ASR(str(checkpoint)).engine.input_processor.prompts
    long_context = "hotword " * (MAX_CACHED_CONTEXT_CHARS // 8 + 1)
    short_prompt, short_at = prompts.build(5, "hotword " * 3, "English")
    long_prompt, long_at = prompts.build(5, long_context, "English")
    assert prompts.cached_template_ids.cache_info().currsize == 1  # only the short context
    assert long_at > short_at and long_prompt[long_at:] == short_prompt[short_at:]
    with pytest.raises(ValueError, match="special token"):
        prompts.build(5, long_context + "<|im_end|>")


def test_async_engine_streams_deltas_that_add_up_to_the_text(checkpoint: Path, clips) -> None:
    engine = AsyncEngine(EngineConfig(model=str(checkpoint)))

    async def run() -> list[tuple[list[str], str]]:
        async def one(clip: np.ndarray, stream: bool) -> tuple[list[str], str]:
            deltas, final = [], None
            request = TranscriptionRequest(clip, sampling_params=SamplingParams(max_tokens=MAX_TOKENS), stream=stream)
            async for output in engine.stream(request):
                deltas.append(output.delta)
                if output.finished:
                    final = output.result
            return deltas, final.text

        return await asyncio.gather(*(one(c, stream) for stream in (True, False) for c in clips[:6]))

    try:
        answers = asyncio.run(run())
        for deltas, text in answers:
            assert "".join(deltas) == text
        streamed, quiet = answers[:6], answers[6:]
        assert [text for _, text in quiet] == [text for _, text in streamed]
        assert all(deltas == ["", text] for deltas, text in quiet)  # accepted, then the whole text
    finally:
        engine.shutdown()


def test_a_server_engine_leaves_a_core_to_the_server(checkpoint: Path) -> None:
    """On the CPU an AsyncEngine runs the model on every core but one (the event loop and the audio decoding have
    the other), on the thread that built it; `cpu_threads` says otherwise."""
    for threads, expected in ((None, max(1, available_cores() - 1)), (1, 1)):
        engine = AsyncEngine(EngineConfig(model=str(checkpoint), cpu_threads=threads))
        try:
            assert engine.engine.num_threads == expected
            assert engine.engine.config.cpu_threads == expected
        finally:
            engine.shutdown()
    with pytest.raises(ValueError, match="cpu_threads"):
        EngineConfig(cpu_threads=0)


def test_calls_from_several_threads_take_turns_and_each_gets_its_own_results(checkpoint: Path, clips, alone) -> None:
    asr = ASR(str(checkpoint))
    params = SamplingParams(max_tokens=MAX_TOKENS)
    results: dict[int, list[list[int]]] = {}

    def transcribe(first: int) -> None:
        mine = range(first, len(clips), 3)
        results[first] = [r.token_ids for r in asr.transcribe([(clips[i], 16000) for i in mine],
                                                              sampling_params=params)]

    threads = [threading.Thread(target=transcribe, args=(first,)) for first in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert {first: results.get(first) for first in range(3)} == {
        first: [alone[i] for i in range(first, len(clips), 3)] for first in range(3)}


def test_a_bad_input_says_which_of_the_inputs_it_was(checkpoint: Path, clips, tmp_path: Path) -> None:
    asr = ASR(str(checkpoint))
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio")
    with pytest.raises(AudioError, match=f"^{notes}: could not decode audio"):
        asr.transcribe([(clips[0], 16000), str(notes)])
    with pytest.raises(AudioError, match="^audio 1: could not decode audio"):
        asr.transcribe([(clips[0], 16000), b"not audio either"])
    with pytest.raises(AudioError, match=f"^audio file not found: {tmp_path / 'gone.wav'}$"):  # named once
        asr.transcribe(str(tmp_path / "gone.wav"))
    # a tuple of files is several inputs, not an (array, sample_rate)
    good = tmp_path / "good.wav"
    sf.write(good, clips[0], 16000)
    with pytest.raises(AudioError, match=f"^audio file not found: {tmp_path / 'b.wav'}$"):
        asr.transcribe((str(good), str(tmp_path / "b.wav")))
    assert len(asr.transcribe((str(good), str(good)), sampling_params=SamplingParams(max_tokens=2))) == 2


@pytest.mark.parametrize(("option", "value"), [
    ("max_num_encoder_tokens", 0), ("num_kv_blocks", 0), ("num_kv_blocks", -5), ("max_model_len", 0),
    ("max_model_len", -5), ("cpu_kv_cache_gib", 0.0), ("cpu_kv_cache_gib", -1.0), ("seed", -1)])
def test_engine_options_out_of_range_are_named_before_anything_loads(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{option} must be"):
        EngineConfig(**{option: value})


def test_devices_resolve_to_an_indexed_cuda_device_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from qasr.engine.model_loader import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'bogus' is not a torch device"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        assert resolve_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            resolve_device("cuda")
    # torch.cuda.set_device refuses a bare "cuda" (even on a GPU): the engine's device always has its index
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="sees 2 CUDA GPU"):
        resolve_device("cuda:2")


def test_async_engine_abort_and_errors(checkpoint: Path, clips) -> None:
    engine = AsyncEngine(EngineConfig(model=str(checkpoint)))

    async def run() -> None:
        with pytest.raises(UnknownLanguageError):
            await engine.transcribe(TranscriptionRequest(clips[0], language="xx-none"))
        stream = engine.stream(TranscriptionRequest(clips[5],
                                                    sampling_params=SamplingParams(max_tokens=500, ignore_eos=True)))
        await anext(stream)
        await stream.aclose()  # the client went away
        for _ in range(100):
            if engine.num_unfinished == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.num_unfinished == 0
        result = await engine.transcribe(TranscriptionRequest(
            clips[1], sampling_params=SamplingParams(max_tokens=4, ignore_eos=True)))
        assert len(result.token_ids) == 4

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()


def test_dtype_options(checkpoint: Path, clips, alone) -> None:
    import torch

    assert transcribe_all(ASR(str(checkpoint), dtype=torch.float32), clips[:3]) == alone[:3]
    bf16 = ASR(str(checkpoint), dtype="bfloat16")
    assert next(bf16.engine.core.runner.model.parameters()).dtype == torch.bfloat16
    assert bf16.engine.core.runner.model.model.layers[0].self_attn.rotary.cos.dtype == torch.float32
    results = transcribe_all(bf16, clips[:3])
    assert all(len(tokens) > 0 for tokens in results)
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        ASR(str(checkpoint), dtype="float64")


def test_async_engine_survives_a_failed_step_and_fails_requests_after_shutdown(checkpoint: Path, clips) -> None:
    engine = AsyncEngine(EngineConfig(model=str(checkpoint)))
    runner = engine.engine.core.runner
    original_launch = runner.launch
    failures = []

    def failing_launch(*args):
        if not failures:
            failures.append(1)
            raise RuntimeError("device on fire")
        return original_launch(*args)

    runner.launch = failing_launch

    async def run() -> None:
        with pytest.raises(RuntimeError, match="engine step failed.*device on fire"):
            await engine.transcribe(TranscriptionRequest(clips[0], sampling_params=SamplingParams(max_tokens=4)))
        result = await engine.transcribe(TranscriptionRequest(
            clips[1], sampling_params=SamplingParams(max_tokens=4, ignore_eos=True)))
        assert len(result.token_ids) == 4
        stream = engine.stream(TranscriptionRequest(clips[2], language="English",  # forced: text streams at once
                                                    sampling_params=SamplingParams(max_tokens=50_000, ignore_eos=True)))
        await anext(stream)
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        with pytest.raises(RuntimeError, match="shut down"):
            async for _ in stream:
                pass
        with pytest.raises(RuntimeError, match="has stopped"):
            await engine.transcribe(TranscriptionRequest(clips[0]))

    asyncio.run(asyncio.wait_for(run(), timeout=120))
    assert not engine.thread.is_alive()


def test_max_tokens_past_max_model_len_is_capped_and_a_prompt_past_it_refused(checkpoint: Path, clips) -> None:
    asr = ASR(str(checkpoint), max_model_len=120)
    engine = asr.engine
    request_id = engine.add_request(TranscriptionRequest(clips[1], sampling_params=SamplingParams(max_tokens=10_000)))
    [seq] = engine.core.scheduler.waiting
    assert seq.num_prompt_tokens + seq.sampling_params.max_tokens == 120
    engine.abort(request_id)
    with pytest.raises(ValueError, match=r"leaves no room for output within max_model_len \(120\)") as refused:
        asr.transcribe([(clips[1], 16000)], context="hotword " * 200)
    assert "req-" not in str(refused.value)


def test_deltas_add_up_to_the_text_of_a_finished_or_aborted_request(checkpoint: Path, clips) -> None:
    """Single-piece requests stream their deltas on a short path, long audio's pieces through the in-order release;
    either way the text a request ends with, aborted mid-stream or finished, is every delta it sent."""
    engine = ASR(str(checkpoint), max_piece_seconds=4.0).engine
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    requests = [TranscriptionRequest(clips[i], language="English", sampling_params=params) for i in (2, 12, 5, 16)]
    ids = [engine.add_request(request) for request in requests]  # one piece and several, to finish, then to abort
    assert [len(engine.output_processor.requests[i].pieces) for i in ids] == [1, 4, 1, 5]
    deltas: dict[str, list[str]] = {i: [] for i in ids}
    results = {}

    def take(outputs) -> None:
        for output in outputs:
            deltas[output.request_id].append(output.delta)
            if output.finished:
                results[output.request_id] = output.result

    for _ in range(12):
        take(engine.step())
    assert engine.output_processor.streaming  # the short path was taken
    take([engine.abort(ids[2]), engine.abort(ids[3])])
    while engine.has_unfinished:
        take(engine.step())
    tokenizer = load_tokenizer(engine.model_path)
    for request_id in ids:
        assert results[request_id].text == "".join(deltas[request_id])
    for request_id in ids[0], ids[2]:  # one piece: its text is its tokens' transcript
        raw = tokenizer.decode(results[request_id].token_ids, skip_special_tokens=True,
                               clean_up_tokenization_spaces=False)
        assert results[request_id].text == parse_transcript(raw, "English")[1]
    assert all(results[i].text for i in ids) and {results[i].finish_reason for i in ids} == {"length", "abort"}
    assert not engine.output_processor.streaming


def test_a_stream_interval_sends_fewer_longer_deltas_of_the_same_text(checkpoint: Path, clips) -> None:
    """stream_interval=4: a streamed request's text comes every fourth token, its first text at once; one piece or
    several, finished or aborted with tokens not yet turned into text, it ends with the text, tokens and segments
    that it gets at interval 1, and its deltas add up to that text."""
    params = SamplingParams(max_tokens=24, ignore_eos=True)

    def run(stream_interval: int) -> tuple[list[list[tuple[int, str]]], list]:
        engine = ASR(str(checkpoint), max_piece_seconds=4.0, stream_interval=stream_interval).engine
        ids = [engine.add_request(TranscriptionRequest(clips[i], language="English", sampling_params=params))
               for i in (2, 12, 5, 16)]
        deltas: dict[str, list[tuple[int, str]]] = {request_id: [] for request_id in ids}  # (step, delta)
        results = {}

        def take(step: int, outputs) -> None:
            for output in outputs:
                if output.delta:
                    deltas[output.request_id].append((step, output.delta))
                if output.finished:
                    results[output.request_id] = output.result

        for step in range(13):
            take(step, engine.step())
        take(13, [engine.abort(ids[2]), engine.abort(ids[3])])
        step = 14
        while engine.has_unfinished:
            take(step, engine.step())
            step += 1
        return [deltas[i] for i in ids], [results[i] for i in ids]

    every_token, every_token_results = run(1)
    every_fourth, every_fourth_results = run(4)
    for fine, coarse, fine_result, coarse_result in zip(every_token, every_fourth, every_token_results,
                                                        every_fourth_results):
        assert (coarse_result.text, coarse_result.token_ids, coarse_result.segments, coarse_result.finish_reason) \
            == (fine_result.text, fine_result.token_ids, fine_result.segments, fine_result.finish_reason)
        assert "".join(delta for _, delta in coarse) == coarse_result.text != ""
        assert coarse[0][0] == fine[0][0]  # the first text as soon as at interval 1
    assert [r.finish_reason for r in every_fourth_results] == ["length", "length", "abort", "abort"]
    one_piece = every_token[0], every_fourth[0]
    assert len(one_piece[0]) > 12 and len(one_piece[1]) <= 2 + 24 // 4  # the first, every fourth token, the last
    between = [step for step, _ in one_piece[1][1:-1]]  # one token a step; the repetition filter may hold some back
    assert between and all(later - earlier >= 4 for earlier, later in zip(between, between[1:]))
    with pytest.raises(ValueError, match="stream_interval must be positive"):
        EngineConfig(stream_interval=0)


def test_a_quiet_request_says_nothing_until_it_ends_as_its_streamed_twin_ends(checkpoint: Path, clips) -> None:
    """stream=False: no deltas and no text work per token; the one output, at the end, holds what the same request
    streamed ends with: finished or aborted, one piece or several (finishing steps apart), first token timed."""
    params = SamplingParams(max_tokens=24, ignore_eos=True)

    def run(stream: bool) -> tuple[list[list], list[set[str]]]:
        # a small token budget admits the pieces of long audio steps apart, so they finish steps apart
        engine = ASR(str(checkpoint), max_piece_seconds=4.0, max_num_batched_tokens=96).engine
        ids = [engine.add_request(TranscriptionRequest(clips[i], language="English", sampling_params=params,
                                                       stream=stream)) for i in (2, 12, 5, 16)]
        outputs: dict[str, list] = {request_id: [] for request_id in ids}
        finishing: list[set[str]] = []  # each step: the requests a piece of which finished
        core_step = engine.core.step

        def step():
            core_outputs = core_step()
            finishing.append({seq.request_id for seq in core_outputs.finished})
            return core_outputs
        engine.core.step = step

        def take(step_outputs) -> None:
            for output in step_outputs:
                outputs[output.request_id].append(output)

        for _ in range(20):
            take(engine.step())
        assert stream or not any(outputs.values())
        take([engine.abort(ids[2]), engine.abort(ids[3])])
        while engine.has_unfinished:
            take(engine.step())
        return [outputs[request_id] for request_id in ids], finishing

    streamed, _ = run(stream=True)
    quiet, finishing = run(stream=False)
    assert sum(any(step) for step in finishing) > 2  # a long audio's pieces did finish apart
    for twin_outputs, [last] in zip(streamed, quiet):
        twin = twin_outputs[-1].result
        assert last.finished and last.delta == last.result.text == twin.text != ""
        assert (last.result.token_ids, last.result.segments, last.result.finish_reason) == (
            twin.token_ids, twin.segments, twin.finish_reason)
        assert last.result.metrics.first_token_time is not None
    assert [output[-1].result.finish_reason for output in quiet] == ["length", "length", "abort", "abort"]


def test_a_server_engine_trims_its_heap_while_busy_and_when_work_stops(checkpoint: Path, clips,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Freed heap pages go back to the OS at most every BUSY_TRIM_INTERVAL_S while the engine works, and when the work
    has run out (the server's resident memory then follows what it holds, not its busiest moment)."""
    from qasr.engine import async_engine

    trims: list[bool] = []  # each trim: was there work in flight
    monkeypatch.setattr(async_engine, "release_freed_memory", lambda: trims.append(engine.engine.has_unfinished))
    monkeypatch.setattr(async_engine, "BUSY_TRIM_INTERVAL_S", 0.0)
    monkeypatch.setattr(async_engine, "IDLE_TRIM_DELAY_S", 0.05)
    engine = AsyncEngine(EngineConfig(model=str(checkpoint)))
    try:
        request = TranscriptionRequest(clips[3], sampling_params=SamplingParams(max_tokens=12, ignore_eos=True))
        asyncio.run(engine.transcribe(request))
        for _ in range(500):
            if trims and not trims[-1]:
                break
            time.sleep(0.01)
        assert trims.count(True) >= 2 and trims[-1] is False
    finally:
        engine.shutdown()


def test_requests_one_after_another_keep_the_heap_between_them(checkpoint: Path, clips,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends its next request as the last one finishes leaves the engine idle for milliseconds: no
    trim there (its pages would fault back in), one once the work has stayed out IDLE_TRIM_DELAY_S."""
    from qasr.engine import async_engine

    trims: list[float] = []
    monkeypatch.setattr(async_engine, "release_freed_memory", lambda: trims.append(time.monotonic()))
    monkeypatch.setattr(async_engine, "BUSY_TRIM_INTERVAL_S", 1e9)
    monkeypatch.setattr(async_engine, "IDLE_TRIM_DELAY_S", 1.0)
    engine = AsyncEngine(EngineConfig(model=str(checkpoint)))

    async def one_after_another() -> None:
        for clip in clips[:4]:
            await engine.transcribe(TranscriptionRequest(clip, sampling_params=SamplingParams(max_tokens=6)))

    try:
        asyncio.run(one_after_another())
        done = time.monotonic()
        assert trims == []
        for _ in range(500):
            if trims:
                break
            time.sleep(0.01)
        assert len(trims) == 1 and trims[0] - done > 0.5
    finally:
        engine.shutdown()
