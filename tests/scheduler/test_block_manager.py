import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from qasr.scheduler import AudioSpan, BlockManager, SamplingParams, Sequence, block_manager

PAD = 151676
# an audio's content hash fixes its length; "x" and "y" have the same length but different content
AUDIOS = [(b"x", 5), (b"y", 5), (b"z", 9)]


def make_seq(prefix: int = 3, audio: int = 0, suffix: int = 2) -> Sequence:
    content_hash, audio_len = AUDIOS[audio]
    prompt = [100 + i for i in range(prefix)] + [PAD] * audio_len + [200 + i for i in range(suffix)]
    return Sequence(prompt, AudioSpan(prefix, audio_len, content_hash), SamplingParams(), frozenset({0}))


def compute(bm: BlockManager, seq: Sequence, num_tokens: int) -> None:
    """What the scheduler and engine do for one chunk: allocate, run it, register full blocks."""
    assert bm.allocate(seq, num_tokens)
    seq.num_computed_tokens += num_tokens
    bm.cache_blocks(seq)


def prefill(bm: BlockManager, seq: Sequence) -> None:
    compute(bm, seq, seq.num_tokens - bm.match_prefix(seq))


def snapshot(bm: BlockManager, *seqs: Sequence):
    return (
        list(bm.free_block_ids),
        [(b.ref_count, b.hash, b.token_ids, b.extra_key) for b in bm.blocks],
        dict(bm.hash_to_block_id),
        [(list(s.block_ids), list(s.block_hashes), s.num_computed_tokens, s.num_cached_tokens) for s in seqs],
    )


def test_allocate_decode_and_free():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(prefix=3, suffix=2)  # 10 tokens
    compute(bm, seq, 10)
    assert len(seq.block_ids) == 3 and bm.num_free_blocks == 5 and bm.usage == pytest.approx(3 / 8)
    assert all(bm.blocks[b].ref_count == 1 for b in seq.block_ids)
    for _ in range(2):  # tokens 11 and 12 fit in the third block
        seq.append_token(7)
        compute(bm, seq, 1)
        assert len(seq.block_ids) == 3
    seq.append_token(7)
    compute(bm, seq, 1)
    assert len(seq.block_ids) == 4
    # 13 tokens in 4 blocks: 3 slots left in the last one plus 4 free blocks
    assert bm.can_allocate(seq, 3 + 4 * 4) and not bm.can_allocate(seq, 3 + 4 * 4 + 1)
    bm.free(seq)
    assert seq.block_ids == [] and bm.num_free_blocks == 8 and bm.usage == 0
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_prefix_hit_with_same_audio():
    bm = BlockManager(num_blocks=16, block_size=4)
    a, b = make_seq(audio=0, suffix=4), make_seq(audio=0, suffix=4)  # 12 tokens
    prefill(bm, a)
    assert bm.match_prefix(b) == 8  # never the whole prompt: the last full block is left to compute
    assert bm.allocate(b, 4)
    assert b.num_computed_tokens == b.num_cached_tokens == 8
    assert b.block_ids[:2] == a.block_ids[:2] and b.block_ids[2] != a.block_ids[2]
    assert [bm.blocks[i].ref_count for i in b.block_ids] == [2, 2, 1]


def test_no_prefix_hit_with_different_audio_but_identical_tokens():
    bm = BlockManager(num_blocks=16, block_size=4)
    a, b = make_seq(audio=0, suffix=4), make_seq(audio=1, suffix=4)
    assert a.all_token_ids == b.all_token_ids and a.audio.content_hash != b.audio.content_hash
    prefill(bm, a)
    assert bm.match_prefix(b) == 0
    assert bm.allocate(b, b.num_tokens) and b.num_computed_tokens == b.num_cached_tokens == 0
    assert not set(a.block_ids) & set(b.block_ids)


def test_text_before_the_audio_is_shared_across_audios():
    bm = BlockManager(num_blocks=16, block_size=4)
    a, b = make_seq(prefix=8, audio=0), make_seq(prefix=8, audio=1)
    prefill(bm, a)
    assert bm.match_prefix(b) == 8


def test_hit_never_covers_the_whole_prompt():
    bm = BlockManager(num_blocks=16, block_size=4)
    a, b = make_seq(prefix=3, suffix=8), make_seq(prefix=3, suffix=8)  # 16 tokens: exactly 4 blocks
    prefill(bm, a)
    assert bm.match_prefix(b) == 12
    assert bm.allocate(b, 4) and b.num_computed_tokens == 12 and len(b.block_ids) == 4


def test_freed_cached_block_is_revived_by_a_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(suffix=4)
    prefill(bm, a)
    cached = a.block_ids[:3]
    bm.free(a)
    assert bm.num_free_blocks == 8 and all(bm.blocks[i].hash is not None for i in cached)
    b = make_seq(suffix=4)
    assert bm.match_prefix(b) == 8
    assert bm.allocate(b, 4)
    assert b.block_ids[:2] == cached[:2] and bm.num_free_blocks == 5
    assert all(i not in bm.free_block_ids for i in b.block_ids)
    assert [bm.blocks[i].ref_count for i in b.block_ids] == [1, 1, 1]


def test_uncached_blocks_are_reused_before_cached_ones():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(suffix=2)  # 10 tokens: 2 full blocks cached, 1 partial
    prefill(bm, a)
    partial = a.block_ids[2]
    bm.free(a)
    assert next(iter(bm.free_block_ids)) == partial


def test_reusing_a_cached_free_block_evicts_it():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq(suffix=4)  # 12 tokens, 3 full blocks
    prefill(bm, a)
    bm.free(a)
    assert len(bm.hash_to_block_id) == 3
    filler = make_seq(audio=2, prefix=2, suffix=5)  # 16 tokens, takes the whole pool
    compute(bm, filler, 16)
    assert all(i in filler.block_ids for i in range(4))
    assert len(bm.hash_to_block_id) == 4 and all(bm.blocks[i].hash is not None for i in filler.block_ids)
    assert all(bm.hash_to_block_id[bm.blocks[i].hash] == i for i in filler.block_ids)
    bm.free(filler)
    assert bm.match_prefix(make_seq(suffix=4)) == 0


def test_failed_allocate_changes_nothing():
    bm = BlockManager(num_blocks=5, block_size=4)
    a = make_seq(suffix=4)  # 12 tokens
    prefill(bm, a)
    bm.free(a)
    big = make_seq(prefix=3, suffix=30)
    compute(bm, big, 8)  # holds 2 blocks; a's blocks partly survive in the free list
    b = make_seq(suffix=4)
    hit = bm.match_prefix(b)
    assert hit > 0
    before = snapshot(bm, big, b)
    assert not bm.can_allocate(b, 4 * 4)
    assert not bm.allocate(b, 4 * 4)  # would revive the hits and still need more fresh blocks than are free
    assert not bm.allocate(big, 100)
    assert snapshot(bm, big, b) == before
    assert bm.match_prefix(b) == hit


def test_prefix_caching_disabled():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    a, b = make_seq(suffix=8), make_seq(suffix=8)
    prefill(bm, a)
    assert bm.match_prefix(b) == 0 and not bm.hash_to_block_id


def test_identical_sequences_computed_together_do_not_conflict():
    bm = BlockManager(num_blocks=16, block_size=4)
    a, b = make_seq(suffix=4), make_seq(suffix=4)
    assert bm.allocate(a, 12) and bm.allocate(b, 12)
    for seq in (a, b):
        seq.num_computed_tokens = 12
        bm.cache_blocks(seq)
    assert len(bm.hash_to_block_id) == 3 and len(b.block_hashes) == 3
    bm.free(a)
    assert bm.match_prefix(make_seq(suffix=4)) == 8
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_hash_collision_is_caught_by_the_stored_key(monkeypatch):
    monkeypatch.setattr(block_manager, "compute_block_hash", lambda parent, token_ids, extra_key: bytes(16))
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(audio=0, suffix=4)
    prefill(bm, a)
    assert len(bm.hash_to_block_id) == 1  # every block collided
    assert bm.match_prefix(make_seq(audio=1, suffix=4)) == 0
    assert bm.match_prefix(make_seq(audio=0, suffix=4)) == 4


def fingerprints(seq: Sequence) -> list[int]:
    """What a KV slot must hold: a stand-in for attention state, which depends on every earlier token
    and, for audio placeholders, on the audio content."""
    out, h = [], 0
    for i, token_id in enumerate(seq.all_token_ids):
        in_audio = seq.audio.start <= i < seq.audio.end
        h = hash((h, token_id, (seq.audio.content_hash, i - seq.audio.start) if in_audio else None))
        out.append(h)
    return out


def test_with_reuse_before_untouched_memory_grows_with_the_most_blocks_in_use_at_once() -> None:
    def twelve_tokens(k: int) -> Sequence:  # 3 blocks of 4, unlike any other sequence's
        return Sequence([1000 * k + j for j in range(12)], AudioSpan(2, 5, bytes([k])), SamplingParams(),
                        frozenset({0}))

    plain, lazy = BlockManager(16, 4), BlockManager(16, 4, reuse_before_untouched=True)
    for bm in (plain, lazy):
        for k in range(8):  # one at a time: a sequence is computed, its blocks cached, then freed
            compute(bm, seq := twelve_tokens(k), 12)
            bm.free(seq)
        assert bm.num_free_blocks == 16
    assert lazy.num_touched_blocks == 3 and plain.num_touched_blocks == 16
    assert len(lazy.hash_to_block_id) == 3 and len(plain.hash_to_block_id) == 16  # the cache keeps what it touched
    seqs = [twelve_tokens(20 + k) for k in range(5)]
    assert all(lazy.allocate(seq, 12) for seq in seqs)  # 15 of 16 blocks at once
    assert lazy.num_touched_blocks == 15 and lazy.num_free_blocks == 1
    assert not lazy.allocate(twelve_tokens(30), 12)


class BlockManagerMachine(RuleBasedStateMachine):

    @initialize(num_blocks=st.integers(3, 14), block_size=st.sampled_from([1, 2, 4]), caching=st.booleans(),
                reuse_before_untouched=st.booleans())
    def setup(self, num_blocks, block_size, caching, reuse_before_untouched):
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching=caching,
                               reuse_before_untouched=reuse_before_untouched)
        self.seqs: list[Sequence] = []
        self.kv: dict[tuple[int, int], int] = {}  # (block id, slot) -> fingerprint written there

    def slot(self, seq: Sequence, i: int) -> tuple[int, int]:
        return seq.block_ids[i // self.bm.block_size], i % self.bm.block_size

    @rule(prefix=st.integers(0, 5), audio=st.integers(0, 2), suffix=st.integers(0, 5))
    def add(self, prefix, audio, suffix):
        if len(self.seqs) < 6:
            self.seqs.append(make_seq(prefix, audio, suffix))

    @precondition(lambda self: self.seqs)
    @rule(pick=st.integers(0, 5), num_tokens=st.integers(1, 12), token_id=st.integers(0, 3))
    def compute(self, pick, num_tokens, token_id):
        seq = self.seqs[pick % len(self.seqs)]
        if seq.num_computed_tokens == seq.num_tokens:
            seq.append_token(token_id)
        start = seq.num_computed_tokens if seq.block_ids else self.bm.match_prefix(seq)
        num_new = min(num_tokens, seq.num_tokens - start)
        before = snapshot(self.bm, *self.seqs)
        if not self.bm.allocate(seq, num_new):
            assert snapshot(self.bm, *self.seqs) == before
            return
        assert seq.num_computed_tokens == start
        expected = fingerprints(seq)
        for i in range(start, start + num_new):
            block_id, offset = self.slot(seq, i)
            assert self.bm.blocks[block_id].ref_count == 1, "writing into a shared block"
            self.kv[block_id, offset] = expected[i]
        seq.num_computed_tokens += num_new
        self.bm.cache_blocks(seq)

    @precondition(lambda self: self.seqs)
    @rule(pick=st.integers(0, 5), finish=st.booleans())
    def free(self, pick, finish):
        seq = self.seqs[pick % len(self.seqs)]
        self.bm.free(seq)
        seq.num_computed_tokens = 0  # a preempted sequence is recomputed from scratch
        if finish:
            self.seqs.remove(seq)

    @invariant()
    def ref_counts_match_holders(self):
        holders = [0] * self.bm.num_blocks
        for seq in self.seqs:
            assert len(set(seq.block_ids)) == len(seq.block_ids)
            for block_id in seq.block_ids:
                holders[block_id] += 1
        assert [b.ref_count for b in self.bm.blocks] == holders

    @invariant()
    def every_block_is_free_or_used(self):
        free = set(self.bm.free_block_ids) | set(range(self.bm.next_untouched, self.bm.num_blocks))
        assert free == {b.block_id for b in self.bm.blocks if b.ref_count == 0}
        # nothing untouched is taken while a block used before is free
        touched = self.bm.num_touched_blocks
        assert all(b.ref_count == 0 and b.hash is None for b in self.bm.blocks[touched:])
        used = sum(1 for b in self.bm.blocks if b.ref_count > 0)
        assert self.bm.num_free_blocks + used == self.bm.num_blocks

    @invariant()
    def hash_index_is_consistent(self):
        for block_hash, block_id in self.bm.hash_to_block_id.items():
            assert self.bm.blocks[block_id].hash == block_hash
        assert sum(b.hash is not None for b in self.bm.blocks) == len(self.bm.hash_to_block_id)

    @invariant()
    def blocks_cover_and_hold_the_computed_tokens(self):
        for seq in self.seqs:
            assert len(seq.block_ids) * self.bm.block_size >= seq.num_computed_tokens
            expected = fingerprints(seq)
            for i in range(seq.num_computed_tokens):
                assert self.kv[self.slot(seq, i)] == expected[i], f"wrong KV at token {i} of {seq}"


BlockManagerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestBlockManagerMachine = BlockManagerMachine.TestCase
