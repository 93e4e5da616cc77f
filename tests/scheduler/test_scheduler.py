import random
from itertools import chain

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qasr.scheduler import (
    PENDING_TOKEN,
    AudioSpan,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    Sequence,
    SequenceStatus,
)

PAD = 151676
STOP = 0
VOCAB = 10  # sampled ids are 0..9, so a random token stops a sequence one time in ten


def make_seq(prefix=3, audio_len=5, suffix=2, content=b"a", max_tokens=8, ignore_eos=False) -> Sequence:
    prompt = [100 + i for i in range(prefix)] + [PAD] * audio_len + [200 + i for i in range(suffix)]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos)
    return Sequence(prompt, AudioSpan(prefix, audio_len, content), params, frozenset({STOP}))


def overlaps_audio(seq: Sequence, start: int, end: int) -> bool:
    return start < seq.audio.end and end > seq.audio.start


def fingerprints(seq: Sequence, token_ids: list[int]) -> list[int]:
    """What a KV slot must hold: depends on every earlier token and, for placeholders, on the audio."""
    out, h = [], 0
    for i, token_id in enumerate(token_ids):
        in_audio = seq.audio.start <= i < seq.audio.end
        h = hash((h, token_id, (seq.audio.content_hash, i - seq.audio.start) if in_audio else None))
        out.append(h)
    return out


class FakeEngine:
    """Drives a Scheduler the way the engine does and checks every step's output against the contract.

    A step runs on a fake device as soon as it is scheduled (the device runs steps in launch order), sampling
    random tokens it remembers. pipelined=True is the real engine's order: schedule step N+1 before update()
    takes step N's tokens, so decodes are scheduled on inputs the host does not know yet.
    """

    def __init__(self, scheduler: Scheduler, seed: int = 0, pipelined: bool = False):
        self.scheduler = scheduler
        self.rng = random.Random(seed)
        self.pipelined = pipelined
        self.encoder_cache: set[int] = set()
        self.kv: dict[tuple[int, int], int] = {}
        self.device_outputs: dict[int, list[int]] = {}  # every token the device sampled, by seq_id
        self.in_flight: tuple[SchedulerOutput, dict[int, int]] | None = None
        self.finished: list[Sequence] = []
        self.outputs: list[SchedulerOutput] = []

    def step(self, abort_between: list[Sequence] = ()) -> SchedulerOutput:
        sched, cfg = self.scheduler, self.scheduler.config
        running_before = list(sched.running)
        before = {id(s): (s.num_computed_tokens, s.num_tokens, s.num_pending_tokens)
                  for s in chain(sched.running, sched.waiting)}
        out = sched.schedule()
        self.outputs.append(out)
        self.check_output(out, running_before, before)
        for seq_id in out.free_encoder:
            self.encoder_cache.remove(seq_id)
        for seq in out.to_encode:
            assert seq.seq_id not in self.encoder_cache
            self.encoder_cache.add(seq.seq_id)
        sampled = {}
        for chunk in out.chunks:
            seq = chunk.seq
            if overlaps_audio(seq, chunk.start, chunk.end):
                assert seq.seq_id in self.encoder_cache, "chunk touches audio that was never encoded"
            self.run_chunk(seq, chunk.start, chunk.end, cfg.block_size)
            if chunk.samples:
                sampled[seq.seq_id] = self.rng.randrange(VOCAB)
                self.device_outputs.setdefault(seq.seq_id, []).append(sampled[seq.seq_id])
        for seq in abort_between:
            sched.abort(seq.seq_id)
        if self.pipelined:
            previous, self.in_flight = self.in_flight, (out, sampled)
            if previous is not None:
                self.take(*previous)
        else:
            self.take(out, sampled)
        return out

    def take(self, out: SchedulerOutput, sampled: dict[int, int]) -> None:
        finished = self.scheduler.update(out, sampled)
        assert all(s.is_finished and s.finish_reason in ("stop", "length") for s in finished)
        for seq in chain(self.scheduler.running, self.scheduler.waiting):
            assert seq.num_pending_tokens <= (1 if self.pipelined else 0)
        self.finished += finished

    def device_token_ids(self, seq: Sequence) -> list[int]:
        """The sequence as the device knows it: the host's tokens, or more while the host lags a step."""
        device = self.device_outputs.get(seq.seq_id, [])
        assert device[:seq.num_output_tokens] == seq.output_token_ids, "host and device disagree on tokens"
        return seq.prompt_token_ids + device

    def check_output(self, out: SchedulerOutput, running_before: list[Sequence],
                     before: dict[int, tuple[int, int, int]]) -> None:
        sched, cfg = self.scheduler, self.scheduler.config
        seqs = [c.seq for c in out.chunks]
        assert len(set(map(id, seqs))) == len(seqs), "a sequence scheduled twice in one step"
        assert out.num_batched_tokens == sum(c.num_tokens for c in out.chunks) <= cfg.max_num_batched_tokens
        assert all(c.num_tokens >= 1 for c in out.chunks)
        is_decode = [c.num_tokens == 1 and c.samples and c.start >= c.seq.audio.end for c in out.chunks]
        assert out.num_decodes == (is_decode + [False]).index(False), "num_decodes: the leading run of decodes"
        for seq in chain(sched.running, sched.waiting):
            assert seq.num_tokens == seq.num_prompt_tokens + seq.num_output_tokens + seq.num_pending_tokens
        assert len(sched.running) <= cfg.max_num_seqs
        # running decodes first, then running prefills, each in running order, then the newly admitted in
        # arrival order
        old = [s for s in seqs if s in running_before]
        decoding = [s for s in running_before if s in old and chunk_start(out, s) == before[id(s)][1] - 1]
        assert old == decoding + [s for s in running_before if s in old and s not in decoding]
        assert seqs[:len(old)] == old
        new = seqs[len(old):]
        assert new == [s for s in sched.running if s in new]
        for chunk in out.chunks:
            seq = chunk.seq
            computed, num_tokens, pending = before[id(seq)]
            assert seq.status == SequenceStatus.RUNNING
            assert chunk.start == (computed if seq in running_before else seq.num_cached_tokens)
            assert seq.num_computed_tokens == chunk.end <= num_tokens
            assert chunk.samples == (chunk.end == num_tokens)
            assert seq.num_pending_tokens == pending + chunk.samples
            assert pending == 0 or chunk.num_tokens == 1, "only a decode may start on a token still in flight"
            assert seq.num_output_tokens + seq.num_pending_tokens <= seq.sampling_params.max_tokens
            assert len(seq.block_ids) * cfg.block_size >= chunk.end
        encoder_tokens = sum(s.audio.length for s in out.to_encode)
        assert encoder_tokens == out.num_encoder_tokens
        assert encoder_tokens <= cfg.max_num_encoder_tokens or len(out.to_encode) == 1
        chunk_of = {id(c.seq): c for c in out.chunks}
        for seq in out.to_encode:
            chunk = chunk_of[id(seq)]
            assert overlaps_audio(seq, chunk.start, chunk.end) and seq.encoded
            assert seq.seq_id not in self.encoder_cache
        for seq in out.preempted:
            assert seq.status == SequenceStatus.WAITING and not seq.block_ids and id(seq) not in chunk_of
        if out.preempted:
            assert all(s in running_before for s in seqs), "admitted new sequences in a step that preempted"
        assert set(out.free_encoder) <= self.encoder_cache

    def run_chunk(self, seq: Sequence, start: int, end: int, block_size: int) -> None:
        """Checks the KV the chunk attends to (including prefix-cache hits), then writes its own."""
        blocks = self.scheduler.block_manager.blocks
        expected = fingerprints(seq, self.device_token_ids(seq))
        slot = lambda i: (seq.block_ids[i // block_size], i % block_size)  # noqa: E731
        for i in range(start):
            assert self.kv[slot(i)] == expected[i], f"wrong KV at token {i} of {seq}"
        for i in range(start, end):
            assert blocks[slot(i)[0]].ref_count == 1, "writing into a shared block"
            self.kv[slot(i)] = expected[i]

    def run(self, max_steps: int = 5000) -> None:
        for _ in range(max_steps):
            if not self.scheduler.has_unfinished:
                self.flush()
                return
            self.step()
        raise AssertionError("no progress")

    def flush(self) -> None:
        """Takes the tokens of the step still in flight (only finished sequences can be in it by now)."""
        if self.in_flight is not None:
            self.take(*self.in_flight)
            self.in_flight = None

    def check_drained(self) -> None:
        self.flush()
        sched = self.scheduler
        assert not sched.has_unfinished and sched.num_running == sched.num_waiting == 0
        bm = sched.block_manager
        assert bm.num_free_blocks == bm.num_blocks and sched.kv_usage == 0
        assert all(b.ref_count == 0 for b in bm.blocks)
        flush = sched.schedule()  # releases the encoder outputs of the last finished sequences
        assert flush.is_empty and not flush.to_encode
        self.encoder_cache -= set(flush.free_encoder)
        assert not self.encoder_cache


def chunk_start(out: SchedulerOutput, seq: Sequence) -> int:
    return next(c.start for c in out.chunks if c.seq is seq)


def check_finished(seq: Sequence) -> None:
    assert seq.is_finished and not seq.block_ids and not seq.encoded
    max_tokens = seq.sampling_params.max_tokens
    assert 1 <= seq.num_output_tokens <= max_tokens
    if seq.finish_reason == "stop":
        assert seq.output_token_ids[-1] in seq.stop_token_ids
    else:
        assert seq.finish_reason == "length" and seq.num_output_tokens == max_tokens
    assert not set(seq.output_token_ids[:-1]) & seq.stop_token_ids


# ---------------------------------------------------------------- randomised engine loop

AUDIOS = [(b"x", 5), (b"y", 5), (b"z", 13), (b"w", 1)]

request = st.tuples(
    st.integers(0, 12),  # arrival step
    st.integers(0, 4),  # text before the audio
    st.integers(0, len(AUDIOS) - 1),
    st.integers(0, 4),  # text after the audio
    st.integers(1, 12),  # max_tokens
    st.booleans(),  # ignore_eos
    st.one_of(st.none(), st.none(), st.none(), st.tuples(st.integers(0, 20), st.booleans())),  # abort
)


@settings(deadline=None, max_examples=1000)
@given(
    max_num_seqs=st.integers(1, 6),
    max_num_batched_tokens=st.integers(1, 40),
    max_num_encoder_tokens=st.integers(1, 20),
    num_blocks=st.integers(1, 40),
    block_size=st.sampled_from([1, 2, 4, 8]),
    prefix_caching=st.booleans(),
    chunked_prefill=st.booleans(),
    requests=st.lists(request, min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    pipelined=st.booleans(),
)
def test_random_engine_loop(max_num_seqs, max_num_batched_tokens, max_num_encoder_tokens, num_blocks, block_size,
                            prefix_caching, chunked_prefill, requests, seed, pipelined):
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          max_num_encoder_tokens=max_num_encoder_tokens, num_blocks=num_blocks,
                          block_size=block_size, enable_prefix_caching=prefix_caching,
                          enable_chunked_prefill=chunked_prefill, max_model_len=40)
    sched = Scheduler(cfg)
    engine = FakeEngine(sched, seed, pipelined)
    arrivals: dict[int, list[Sequence]] = {}
    aborts: dict[int, list[tuple[Sequence, bool]]] = {}
    accepted = []
    for arrival, prefix, audio, suffix, max_tokens, ignore_eos, abort in requests:
        content, audio_len = AUDIOS[audio]
        seq = make_seq(prefix, audio_len, suffix, content, max_tokens, ignore_eos)
        fits = (seq.num_prompt_tokens + max_tokens <= cfg.max_model_len
                and -(-(seq.num_prompt_tokens + max_tokens - 1) // block_size) <= num_blocks
                and (chunked_prefill or seq.num_prompt_tokens <= max_num_batched_tokens))
        if not fits:
            with pytest.raises(ValueError):
                sched.add(seq)
            continue
        arrivals.setdefault(arrival, []).append(seq)
        accepted.append(seq)
        if abort is not None:
            aborts.setdefault(arrival + abort[0], []).append((seq, abort[1]))

    step = 0
    while sched.has_unfinished or step <= 12:
        for seq in arrivals.get(step, []):
            sched.add(seq)
        between = []
        for seq, during_step in aborts.get(step, []):
            if during_step:
                between.append(seq)  # aborted after schedule(), before update(): its chunk must be ignored
            else:
                was_finished = seq.is_finished
                assert sched.abort(seq.seq_id) is (None if was_finished else seq)
        engine.step(abort_between=between)
        step += 1
        assert step < 3000, "no progress"

    engine.check_drained()
    assert sorted(s.seq_id for s in engine.finished) == sorted(s.seq_id for s in accepted
                                                              if s.finish_reason != "abort")
    for seq in accepted:
        if seq.finish_reason == "abort":
            assert seq.is_finished and not seq.block_ids
        else:
            check_finished(seq)


# ---------------------------------------------------------------- targeted cases


def test_preemption_with_a_tiny_pool():
    # each sequence needs up to 4 blocks of 4 tokens; 8 blocks cannot hold all four at once
    sched = Scheduler(SchedulerConfig(num_blocks=8, block_size=4, max_num_batched_tokens=64))
    seqs = [make_seq(content=bytes([i]), max_tokens=8, ignore_eos=True) for i in range(4)]  # 10 + 8 tokens
    for seq in seqs:
        sched.add(seq)
    engine = FakeEngine(sched)
    engine.run()
    engine.check_drained()
    assert sum(s.num_preemptions for s in seqs) > 0
    assert any(out.preempted for out in engine.outputs)
    for seq in seqs:
        check_finished(seq)
        assert seq.finish_reason == "length" and seq.num_output_tokens == 8


def test_preempted_sequence_recomputes_its_outputs():
    sched = Scheduler(SchedulerConfig(num_blocks=6, block_size=4, enable_prefix_caching=False))
    a, b = make_seq(max_tokens=12, ignore_eos=True), make_seq(content=b"b", max_tokens=12, ignore_eos=True)
    sched.add(a)
    sched.add(b)
    engine = FakeEngine(sched)
    while not engine.outputs or not engine.outputs[-1].preempted:
        engine.step()
    victim = engine.outputs[-1].preempted[0]
    assert victim is b and victim.num_output_tokens > 0  # the most recently admitted goes first
    engine.run()
    admissions = [c for out in engine.outputs for c in out.chunks if c.seq is b and c.start == 0]
    readmission = admissions[-1]
    assert len(admissions) == 1 + b.num_preemptions
    assert readmission.num_tokens > b.num_prompt_tokens  # prompt and the outputs so far
    check_finished(a)
    check_finished(b)


def test_chunked_prefill_with_a_tiny_budget():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=4, block_size=4))
    seq = make_seq(prefix=3, audio_len=13, suffix=4, max_tokens=3)  # 20 tokens
    sched.add(seq)
    engine = FakeEngine(sched)
    engine.run()
    chunks = [c for out in engine.outputs for c in out.chunks]
    prefill = [c for c in chunks if c.start < seq.num_prompt_tokens]
    assert [(c.start, c.num_tokens) for c in prefill] == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4)]
    assert [c.samples for c in prefill] == [False] * 4 + [True]
    # the audio is encoded once, with the first chunk that touches it, and released once the prefill passes it
    encode_steps = [i for i, out in enumerate(engine.outputs) if out.to_encode]
    free_steps = [i for i, out in enumerate(engine.outputs) if seq.seq_id in out.free_encoder]
    assert encode_steps == [0] and free_steps == [4]
    check_finished(seq)


def test_without_chunked_prefill_a_prompt_waits_for_a_step_with_room():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=12, enable_chunked_prefill=False))
    a, b = make_seq(max_tokens=4, ignore_eos=True), make_seq(content=b"b", max_tokens=4, ignore_eos=True)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert [(c.seq, c.num_tokens) for c in out.chunks] == [(a, 10)]


def test_running_sequences_come_first():
    sched = Scheduler(SchedulerConfig())
    a = make_seq(max_tokens=5, ignore_eos=True)
    sched.add(a)
    engine = FakeEngine(sched)
    engine.step()
    b = make_seq(content=b"b")
    sched.add(b)
    out = engine.step()
    assert [(c.seq, c.start, c.num_tokens) for c in out.chunks] == [(a, 10, 1), (b, 0, 10)]


def test_decodes_are_not_held_back_by_a_long_prefill_ahead_of_them():
    # a chunked prefill at the head of running (e.g. readmitted after preemption) and two decodes behind it;
    # build that state by hand, as admission alone rarely leaves it
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8, block_size=4))
    long = make_seq(prefix=3, audio_len=30, suffix=2, content=b"long", max_tokens=2, ignore_eos=True)
    shorts = [make_seq(prefix=1, audio_len=2, suffix=1, content=bytes([i]), max_tokens=5, ignore_eos=True)
              for i in range(2)]
    for seq, computed in ((long, 8), (shorts[0], 4), (shorts[1], 4)):
        assert sched.block_manager.allocate(seq, computed)
        seq.num_computed_tokens = computed
        seq.status = SequenceStatus.RUNNING
        sched.running.append(seq)
    long.encoded = True  # its prefill is past the start of its audio
    for seq in shorts:
        seq.append_token(7)  # one sampled token each: the next step is a decode
    out = sched.schedule()
    assert [(c.seq, c.start, c.num_tokens) for c in out.chunks] == [
        (shorts[0], 4, 1), (shorts[1], 4, 1), (long, 8, 6)]
    assert not out.to_encode


def test_pipelined_decode_is_scheduled_before_its_input_is_known():
    sched = Scheduler(SchedulerConfig())
    seq = make_seq(max_tokens=5, ignore_eos=True)  # 10 prompt tokens
    sched.add(seq)
    first = sched.schedule()
    assert seq.num_computed_tokens == 10 and seq.num_pending_tokens == 1 and seq.num_tokens == 11
    assert seq.token_ids_slice(9, 11)[-1] == PENDING_TOKEN
    second = sched.schedule()  # the engine schedules step 2 while step 1 still runs
    assert [(c.seq, c.start, c.num_tokens, c.samples) for c in second.chunks] == [(seq, 10, 1, True)]
    assert seq.num_pending_tokens == 2
    sched.update(first, {seq.seq_id: 7})
    assert seq.output_token_ids == [7] and seq.num_pending_tokens == 1
    sched.update(second, {seq.seq_id: 8})
    assert seq.output_token_ids == [7, 8] and seq.num_pending_tokens == 0


def test_a_sequence_that_stops_in_flight_wastes_one_step_and_frees_its_blocks():
    sched = Scheduler(SchedulerConfig(block_size=4))
    seq = make_seq(max_tokens=8)
    sched.add(seq)
    first = sched.schedule()
    second = sched.schedule()
    assert [c.seq for c in second.chunks] == [seq]
    assert sched.update(first, {seq.seq_id: STOP}) == [seq]
    assert seq.is_finished and seq.finish_reason == "stop" and not seq.block_ids
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks
    assert sched.update(second, {seq.seq_id: 5}) == []  # the token sampled after the stop is dropped
    assert seq.output_token_ids == [STOP] and not sched.has_unfinished


def test_max_tokens_are_not_overshot_while_the_last_token_is_in_flight():
    sched = Scheduler(SchedulerConfig())
    seq = make_seq(max_tokens=2, ignore_eos=True)
    sched.add(seq)
    steps = [sched.schedule(), sched.schedule()]
    assert seq.awaits_last_token
    assert sched.schedule().is_empty  # both tokens are sampled; nothing is left to run
    assert sched.update(steps[0], {seq.seq_id: 3}) == []
    assert sched.update(steps[1], {seq.seq_id: 4}) == [seq]
    assert seq.output_token_ids == [3, 4] and seq.finish_reason == "length"


def test_admission_is_fifo():
    sched = Scheduler(SchedulerConfig(max_num_seqs=1))
    seqs = [make_seq(content=bytes([i]), max_tokens=3, ignore_eos=True) for i in range(4)]
    for seq in seqs:
        sched.add(seq)
    engine = FakeEngine(sched)
    engine.run()
    admitted = [c.seq for out in engine.outputs for c in out.chunks if c.start == 0]
    assert admitted == seqs
    assert engine.finished == seqs


def test_encoder_budget_limits_audios_per_step():
    sched = Scheduler(SchedulerConfig(max_num_encoder_tokens=8))
    seqs = [make_seq(audio_len=5, content=bytes([i]), max_tokens=2) for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    engine = FakeEngine(sched)
    assert [s.to_encode for s in [engine.step(), engine.step(), engine.step()]] == [[s] for s in seqs]


def test_an_audio_larger_than_the_encoder_budget_runs_alone():
    sched = Scheduler(SchedulerConfig(max_num_encoder_tokens=4))
    big, small = make_seq(audio_len=13, content=b"big"), make_seq(audio_len=2, content=b"small")
    sched.add(big)
    sched.add(small)
    engine = FakeEngine(sched)
    assert engine.step().to_encode == [big]
    assert engine.step().to_encode == [small]


@pytest.mark.parametrize("b_computed, b_chunks", [(1, [(1, 2)]), (3, [])])
def test_running_prefill_stops_before_an_audio_the_encoder_budget_cannot_take(b_computed, b_chunks):
    # two running prefills about to reach their audio; admission rarely leaves this state, so build it by hand
    sched = Scheduler(SchedulerConfig(max_num_encoder_tokens=5, block_size=4))
    a, b = make_seq(prefix=3, content=b"a"), make_seq(prefix=3, content=b"b")
    for seq, computed in ((a, 3), (b, b_computed)):
        assert sched.block_manager.allocate(seq, computed)
        seq.num_computed_tokens = computed
        seq.status = SequenceStatus.RUNNING
        sched.running.append(seq)
    out = sched.schedule()
    assert out.to_encode == [a] and not b.encoded
    assert [(c.seq, c.start, c.num_tokens) for c in out.chunks] == [(a, 3, 7)] + [(b, *c) for c in b_chunks]
    sched.update(out, {a.seq_id: 4})
    out = sched.schedule()
    assert out.to_encode == [b] and [(c.seq, c.start) for c in out.chunks] == [(a, 10), (b, 3)]


def test_prefix_hit_past_the_audio_skips_the_encoder():
    sched = Scheduler(SchedulerConfig(block_size=4))
    a = make_seq(suffix=8, max_tokens=2, ignore_eos=True)  # 16 tokens, audio [3, 8)
    sched.add(a)
    engine = FakeEngine(sched)
    engine.run()
    b = make_seq(suffix=8, max_tokens=2, ignore_eos=True)
    sched.add(b)
    out = engine.step()
    assert [(c.start, c.num_tokens) for c in out.chunks] == [(12, 4)] and b.num_cached_tokens == 12
    assert out.to_encode == []
    engine.run()
    engine.check_drained()


def test_stop_token_finishes_and_is_kept():
    sched = Scheduler(SchedulerConfig())
    seq = make_seq(max_tokens=8)
    sched.add(seq)
    out = sched.schedule()
    assert sched.update(out, {seq.seq_id: 5}) == []
    out = sched.schedule()
    assert sched.update(out, {seq.seq_id: STOP}) == [seq]
    assert seq.output_token_ids == [5, STOP] and seq.finish_reason == "stop"
    assert sched.block_manager.num_free_blocks == sched.config.num_blocks


def test_ignore_eos_runs_to_max_tokens():
    seq = make_seq(max_tokens=3, ignore_eos=True)
    assert seq.stop_token_ids == frozenset()
    sched = Scheduler(SchedulerConfig())
    sched.add(seq)
    for _ in range(3):
        finished = sched.update(sched.schedule(), {seq.seq_id: STOP})
    assert finished == [seq] and seq.finish_reason == "length" and seq.output_token_ids == [STOP] * 3


def test_abort_frees_blocks_and_encoder_output():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=6))
    a, b = make_seq(), make_seq(content=b"b")
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    sched.update(out, {})
    assert a.block_ids and a.encoded and not a.is_finished
    assert sched.abort(a.seq_id) is a
    assert a.finish_reason == "abort" and a.is_finished and not a.block_ids and not a.encoded
    assert sched.abort(b.seq_id) is b  # still waiting
    assert sched.abort(b.seq_id) is None
    assert sched.block_manager.num_free_blocks == sched.config.num_blocks and not sched.has_unfinished
    out = sched.schedule()
    assert out.is_empty and out.free_encoder == [a.seq_id]


def test_abort_between_schedule_and_update():
    sched = Scheduler(SchedulerConfig())
    a, b = make_seq(), make_seq(content=b"b")
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    sched.abort(a.seq_id)
    assert sched.update(out, {a.seq_id: 3, b.seq_id: 3}) == []
    assert a.output_token_ids == [] and b.output_token_ids == [3]
    assert sched.schedule().free_encoder == [a.seq_id, b.seq_id]


def test_add_rejects_impossible_sequences():
    sched = Scheduler(SchedulerConfig(num_blocks=4, block_size=4, max_model_len=64))
    with pytest.raises(ValueError, match="max_model_len"):
        sched.add(make_seq(max_tokens=60))
    with pytest.raises(ValueError, match="KV blocks"):
        sched.add(make_seq(max_tokens=8))  # 10 + 8 - 1 tokens need 5 blocks
    sched.add(make_seq(max_tokens=7))
    no_chunking = Scheduler(SchedulerConfig(max_num_batched_tokens=8, enable_chunked_prefill=False))
    with pytest.raises(ValueError, match="chunked prefill"):
        no_chunking.add(make_seq())


def test_invalid_parameters_are_rejected():
    for bad in (dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=0), dict(top_p=1.5),
                dict(top_k=-1), dict(max_tokens=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams().greedy and not SamplingParams(temperature=0.7).greedy
    with pytest.raises(ValueError, match="audio span"):
        Sequence([1, 2, 3], AudioSpan(2, 2, b"a"), SamplingParams(), frozenset())
    with pytest.raises(ValueError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)
