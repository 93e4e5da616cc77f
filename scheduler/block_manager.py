import hashlib
from array import array
from collections import OrderedDict

from qasr.scheduler.sequence import PENDING_TOKEN, Sequence

HASH_SIZE = 16
ROOT_HASH = bytes(HASH_SIZE)


def compute_block_hash(parent_hash: bytes, token_ids: list[int], extra_key: bytes) -> bytes:
    # parent and token bytes have fixed lengths, so the concatenation is unambiguous
    h = hashlib.blake2b(parent_hash, digest_size=HASH_SIZE)
    h.update(array("q", token_ids).tobytes())
    h.update(extra_key)
    return h.digest()


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "extra_key")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None  # set only while the block is registered in the prefix cache
        self.token_ids: tuple[int, ...] = ()
        self.extra_key = b""

    def forget(self) -> None:
        self.hash = None
        self.token_ids = ()
        self.extra_key = b""


class BlockManager:

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 reuse_before_untouched: bool = False):
        """`reuse_before_untouched`: for a pool whose memory becomes resident only where written (the CPU's), a
        block used before is taken (evicting a cached one) before one never used, so memory grows with the
        most blocks ever in use at once rather than with everything the prefix cache could keep."""
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # blocks never used yet are [next_untouched, num_blocks); with reuse_before_untouched they are taken only
        # when no free block is left below, otherwise all of them start in the free list
        self.next_untouched = 0 if reuse_before_untouched else num_blocks
        # insertion order = free order: the head is reused (and evicted from the cache) first
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(self.next_untouched))
        self.hash_to_block_id: dict[bytes, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids) + self.num_blocks - self.next_untouched

    @property
    def num_touched_blocks(self) -> int:
        """Blocks used at least once (all of them unless reuse_before_untouched): what a lazily resident pool
        holds in memory."""
        return self.next_untouched

    @property
    def usage(self) -> float:
        return 1 - self.num_free_blocks / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _block_key(self, seq: Sequence, i: int, parent_hash: bytes) -> tuple[bytes, list[int], bytes]:
        start, end = i * self.block_size, (i + 1) * self.block_size
        token_ids = seq.token_ids_slice(start, end)
        assert PENDING_TOKEN not in token_ids, "a block with a token still on the device cannot be hashed"
        # audio placeholders share one token id: the audio content must be part of the key
        extra_key = seq.audio.content_hash if start < seq.audio.end and end > seq.audio.start else b""
        return compute_block_hash(parent_hash, token_ids, extra_key), token_ids, extra_key

    def _find_cached_blocks(self, seq: Sequence) -> list[int]:
        if not self.enable_prefix_caching:
            return []
        block_ids = []
        parent_hash = ROOT_HASH
        # full blocks only, and at least one token is left to compute so the step has logits to sample from
        for i in range((seq.num_tokens - 1) // self.block_size):
            block_hash, token_ids, extra_key = self._block_key(seq, i, parent_hash)
            block_id = self.hash_to_block_id.get(block_hash)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.token_ids != tuple(token_ids) or block.extra_key != extra_key:
                break
            block_ids.append(block_id)
            parent_hash = block_hash
        return block_ids

    def match_prefix(self, seq: Sequence) -> int:
        return len(self._find_cached_blocks(seq)) * self.block_size

    def _plan(self, seq: Sequence, num_new_tokens: int) -> tuple[list[int], int] | None:
        hit_block_ids = [] if seq.block_ids else self._find_cached_blocks(seq)
        num_computed = seq.num_computed_tokens if seq.block_ids else len(hit_block_ids) * self.block_size
        num_have = len(seq.block_ids) + len(hit_block_ids)
        num_fresh = max(0, self.num_blocks_for(num_computed + num_new_tokens) - num_have)
        num_revived = sum(1 for block_id in hit_block_ids if self.blocks[block_id].ref_count == 0)
        if num_fresh + num_revived > self.num_free_blocks:
            return None
        return hit_block_ids, num_fresh

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self._plan(seq, num_new_tokens) is not None

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        plan = self._plan(seq, num_new_tokens)
        if plan is None:
            return False
        hit_block_ids, num_fresh = plan
        if not seq.block_ids:
            assert seq.num_computed_tokens == 0, "a sequence without blocks has nothing computed"
            for block_id in hit_block_ids:
                self._take_cached(block_id)
            seq.block_ids = hit_block_ids
            seq.block_hashes = [self.blocks[block_id].hash for block_id in hit_block_ids]
            seq.num_cached_tokens = seq.num_computed_tokens = len(hit_block_ids) * self.block_size
        seq.block_ids.extend(self._take_free() for _ in range(num_fresh))
        return True

    def _take_cached(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_block_ids[block_id]
        block.ref_count += 1

    def _take_free(self) -> int:
        if self.free_block_ids:
            block_id, _ = self.free_block_ids.popitem(last=False)
        else:
            block_id, self.next_untouched = self.next_untouched, self.next_untouched + 1
        block = self.blocks[block_id]
        assert block.ref_count == 0
        if block.hash is not None:
            del self.hash_to_block_id[block.hash]
            block.forget()
        block.ref_count = 1
        return block_id

    def free(self, seq: Sequence) -> None:
        # reversed: a sequence's tail blocks are the least likely to be shared, so they are reused first
        for block_id in reversed(seq.block_ids):
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} freed twice"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
                if block.hash is None:
                    # holds nothing worth reviving: reuse it before any cached block
                    self.free_block_ids.move_to_end(block_id, last=False)
        seq.block_ids = []
        seq.block_hashes = []

    def cache_blocks(self, seq: Sequence) -> None:
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        assert num_full <= len(seq.block_ids)
        parent_hash = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
        for i in range(len(seq.block_hashes), num_full):
            block_hash, token_ids, extra_key = self._block_key(seq, i, parent_hash)
            seq.block_hashes.append(block_hash)
            # an identical block may already be cached (two equal requests prefilled together); keep that one
            if block_hash not in self.hash_to_block_id:
                block = self.blocks[seq.block_ids[i]]
                assert block.hash is None
                block.hash, block.token_ids, block.extra_key = block_hash, tuple(token_ids), extra_key
                self.hash_to_block_id[block_hash] = block.block_id
            parent_hash = block_hash
