"""Triton paged attention (unified 2D and split-KV) against the torch reference, under the interpreter on CPU."""

from dataclasses import replace

import pytest
import torch

from qasr.kernels import AttentionMetadata, SplitKVWorkspace
from qasr.kernels.attention_metadata import padded_head_dim
from qasr.kernels.reference import paged_attention as reference
from qasr.kernels.triton import paged_attention
from qasr.kernels.triton.paged_attention import unified_attention, use_split_kv
from qasr.kernels.triton.tuning import AttentionTuning, attention_tuning

DTYPES = [torch.float32, torch.float16]
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}

# (query_lens, context_lens): context = cached tokens before this step, seq_len = context + query
BATCHES = {
    "decode": ([1, 1, 1, 1], [0, 17, 40, 63]),
    "prefill": ([5, 37, 1, 20], [0, 0, 0, 0]),
    "mixed": ([1, 13, 22, 1, 9], [30, 19, 0, 5, 16]),  # decode, chunked prefill, fresh prefill, decode, chunk
}
# (query heads, kv heads, head_dim): GQA ratios 1, 2, 3 and a head_dim that is not a power of two
HEADS = [(2, 2, 32), (4, 2, 16), (6, 2, 24)]


def expected(batch) -> torch.Tensor:
    return reference.paged_attention(batch.query.float(), batch.k_cache.float(), batch.v_cache.float(),
                                      batch.meta, batch.scale)


def assert_matches(out: torch.Tensor, batch) -> None:
    assert out.dtype == batch.query.dtype and out.shape == batch.query.shape
    error = (out.float() - expected(batch)).abs().max().item()
    assert error <= TOLERANCE[out.dtype], f"max abs error {error}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv{h[2]}d")
@pytest.mark.parametrize("kind", list(BATCHES))
def test_unified_attention(kind: str, heads: tuple[int, int, int], dtype: torch.dtype, paged_batch, seed_of) -> None:
    num_heads, num_kv_heads, head_dim = heads
    query_lens, context_lens = BATCHES[kind]
    batch = paged_batch(query_lens, context_lens, num_heads, num_kv_heads, head_dim, dtype,
                        seed=seed_of(kind, heads, dtype))
    assert_matches(unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                     split_kv=False), batch)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("block_size", [8, 32])
def test_unified_attention_tile_shapes(block_m: int, block_size: int, paged_batch) -> None:
    """Many q-blocks per sequence (small BLOCK_M), and KV tiles that span or split cache blocks."""
    batch = paged_batch([1, 29, 40, 3], [45, 7, 0, 70], 6, 2, 16, torch.float32, seed=block_m + block_size,
                        block_size=block_size)
    assert_matches(unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                     split_kv=False, block_m=block_m), batch)


@pytest.mark.parametrize(("heads", "block_size"), [((4, 2, 16), 16), ((6, 2, 24), 8)],
                         ids=["4q2kv16d-16", "6q2kv24d-8"])
def test_a_mixed_steps_decodes_apart_give_the_rows_of_each_part_alone(heads: tuple[int, int, int], block_size: int,
                                                                       paged_batch, seed_of) -> None:
    """Leading decodes in a launch of their own: their rows are those of the decodes alone as a pure-decode batch,
    and the chunks' rows those of the one launch over the whole step, to the bit (the same programs, numbered
    from an offset: 35 decodes fill one q-block of the chunks' launch and part of the next, 32 or 21 tokens)."""
    num_heads, num_kv_heads, head_dim = heads
    generator = torch.Generator().manual_seed(seed_of(heads, block_size))
    decodes = 35
    context_lens = torch.randint(0, 90, (decodes,), generator=generator).tolist() + [19, 0, 5, 16]
    query_lens = [1] * decodes + [13, 40, 1, 9]
    batch = paged_batch(query_lens, context_lens, num_heads, num_kv_heads, head_dim, torch.float32,
                        seed=seed_of(heads, block_size), block_size=block_size)
    assert batch.meta.num_decodes == decodes
    args = (batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    with attention_tuning(AttentionTuning(decode_launch_min_seqs=decodes)):
        apart = unified_attention(*args)
    with attention_tuning(AttentionTuning(decode_launch_min_seqs=decodes + 1)):  # too few decodes: one launch
        together = unified_attention(*args)
    assert_matches(apart, batch)
    assert torch.equal(apart[decodes:], together[decodes:])
    meta = batch.meta
    alone_meta = replace(meta, slot_mapping=meta.slot_mapping[:decodes],
                         query_start_loc=meta.query_start_loc[:decodes + 1], seq_lens=meta.seq_lens[:decodes],
                         block_tables=meta.block_tables[:decodes], max_query_len=1,
                         max_seq_len=max(meta.seq_lens_host[:decodes]), query_lens_host=meta.query_lens_host[:decodes],
                         seq_lens_host=meta.seq_lens_host[:decodes], num_decodes=decodes)
    alone = unified_attention(batch.query[:decodes], batch.k_cache, batch.v_cache, alone_meta, batch.scale,
                              split_kv=False)
    assert torch.equal(apart[:decodes], alone)


def graph_step(batch, extra_tokens: int, extra_seqs: int) -> tuple[torch.Tensor, AttentionMetadata]:
    """The batch as a mixed-step CUDA graph sees it (engine/mixed_graphs.py): tokens padded with ones of no sequence
    (slot -1), empty sequences after the last, the host's fields frozen at their capture values (num_decodes 0,
    max_query_len the graph's size), the number of decodes on the device."""
    meta, num_tokens, num_seqs = batch.meta, batch.query.shape[0], batch.meta.num_seqs
    size, most_seqs = num_tokens + extra_tokens, num_seqs + extra_seqs
    query = torch.cat([batch.query, torch.randn(extra_tokens, *batch.query.shape[1:])])
    query_start_loc = torch.full((most_seqs + 1,), num_tokens, dtype=torch.int32)
    query_start_loc[:num_seqs + 1] = meta.query_start_loc
    seq_lens = torch.zeros(most_seqs, dtype=torch.int32)
    seq_lens[:num_seqs] = meta.seq_lens
    block_tables = torch.zeros(most_seqs, meta.block_tables.shape[1], dtype=torch.int32)
    block_tables[:num_seqs] = meta.block_tables
    return query, AttentionMetadata(
        slot_mapping=torch.full((size,), -1, dtype=torch.long), query_start_loc=query_start_loc, seq_lens=seq_lens,
        block_tables=block_tables, max_query_len=size, max_seq_len=meta.max_seq_len,
        query_lens_host=[0] * most_seqs, seq_lens_host=[0] * most_seqs,
        num_decodes_device=torch.tensor([meta.num_decodes], dtype=torch.int32))


@pytest.mark.parametrize("decodes_apart", [True, False], ids=["decodes apart", "too few decodes"])
@pytest.mark.parametrize(("decodes", "chunks", "heads", "padding"), [
    (21, [13, 40, 9], (4, 2, 16), (0, 0)),
    (70, [13, 40, 9], (6, 2, 24), (7, 5)),  # 21 queries a chunks' q-block: the decodes fill 3 and part of a 4th
    (64, [17], (4, 2, 16), (3, 0)),  # 2 whole q-blocks of the chunks' launch; every sequence but one a decode
], ids=["21 decodes", "70 decodes, padded", "64 decodes"])
def test_a_graphs_launches_take_the_decodes_from_the_device(decodes: int, chunks: list[int],
                                                            heads: tuple[int, int, int], padding: tuple[int, int],
                                                            decodes_apart: bool, paged_batch) -> None:
    """What a CUDA graph of mixed steps replays: both launches, each grid sized for the most its part can hold, the
    number of decodes read from num_decodes_device. The rows are those of the host's own split, or of the one
    launch when there are too few decodes, to the bit; each launch writes only its own part's rows, and the padding
    gets none."""
    num_heads, num_kv_heads, head_dim = heads
    context_lens = [(37 * i) % 90 for i in range(decodes)] + [(19 * i) % 30 for i in range(len(chunks))]
    batch = paged_batch([1] * decodes + chunks, context_lens, num_heads, num_kv_heads, head_dim, torch.float32,
                        seed=decodes)
    query, graph_meta = graph_step(batch, *padding)
    num_tokens = batch.query.shape[0]
    tuning = AttentionTuning(decode_launch_min_seqs=decodes if decodes_apart else decodes + 1)
    with attention_tuning(tuning):
        from_device = unified_attention(query, batch.k_cache, batch.v_cache, graph_meta, batch.scale)
        from_host = unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    assert_matches(from_device[:num_tokens], batch)
    assert torch.equal(from_device[:num_tokens], from_host)

    def rows_written(seq_range: str) -> torch.Tensor:
        out = torch.full_like(query, float("nan"))
        size, most_seqs = query.shape[0], graph_meta.num_seqs
        most_decodes = min(size, most_seqs)
        decode_part = seq_range == paged_attention.DEVICE_DECODES
        with attention_tuning(tuning):
            paged_attention._launch_2d(
                query, out, batch.k_cache, batch.v_cache, graph_meta, batch.scale, 0,
                most_decodes if decode_part else most_seqs, most_decodes if decode_part else size,
                paged_attention.DECODE_BLOCK_M if decode_part else paged_attention.PREFILL_BLOCK_M,
                tuning.decode(False) if decode_part else tuning.prefill(), seq_range, tuning.decode_launch_min_seqs)
        return ~out.isnan().all(dim=(1, 2))

    rows = torch.arange(query.shape[0])
    apart = rows < (decodes if decodes_apart else 0)
    assert torch.equal(rows_written(paged_attention.DEVICE_DECODES), apart)
    assert torch.equal(rows_written(paged_attention.DEVICE_CHUNKS), ~apart & (rows < num_tokens))


def test_a_graph_that_cannot_hold_enough_decodes_beside_a_chunk_launches_once(paged_batch, monkeypatch) -> None:
    """Each launch a graph captures costs its replays a few microseconds a layer even when all its programs exit:
    the decodes get one only where a step can have decode_launch_min_seqs of them and a chunk besides."""
    batch = paged_batch([1, 1, 1, 6], [3, 9, 4, 0], 4, 2, 16, torch.float32, seed=29)  # 4 sequences, 9 tokens
    graph_meta = replace(batch.meta, num_decodes=0, num_decodes_device=torch.tensor([3], dtype=torch.int32))
    launches: list[str] = []  # the sequence range of each launch
    launch = paged_attention._launch_2d

    def recorded(*args, seq_range: str = paged_attention.HOST_RANGE, min_decodes: int = 0) -> None:
        launches.append(seq_range)
        launch(*args, seq_range=seq_range, min_decodes=min_decodes)

    monkeypatch.setattr(paged_attention, "_launch_2d", recorded)
    for min_decodes, expected_launches in [(3, [paged_attention.DEVICE_DECODES, paged_attention.DEVICE_CHUNKS]),
                                           (4, [paged_attention.HOST_RANGE])]:  # 4 would leave no chunk
        launches.clear()
        with attention_tuning(AttentionTuning(decode_launch_min_seqs=min_decodes)):
            assert_matches(unified_attention(batch.query, batch.k_cache, batch.v_cache, graph_meta, batch.scale),
                           batch)
        assert launches == expected_launches


def test_the_reference_takes_new_chunks_of_one_length_in_one_call_each_as_alone(paged_batch) -> None:
    """On the CPU prefill chunks of one length with nothing cached before them (a batch of new clips) go through one
    attention call: each chunk's rows are, to the bit, those it gets as the only sequence of a step, beside decodes,
    a chunk with context and a new chunk of another length; the interpreted Triton kernel agrees."""
    query_lens, context_lens = [1, 24, 24, 7, 24, 1, 24], [30, 0, 0, 0, 0, 12, 5]
    batch = paged_batch(query_lens, context_lens, 4, 2, 16, torch.float32, seed=11, block_size=8)
    together = expected(batch)
    meta, starts = batch.meta, batch.meta.query_start_loc.tolist()
    for i, (start, end) in enumerate(zip(starts, starts[1:])):
        alone_meta = replace(meta, slot_mapping=meta.slot_mapping[start:end],
                             query_start_loc=torch.tensor([0, end - start], dtype=torch.int32),
                             seq_lens=meta.seq_lens[i:i + 1], block_tables=meta.block_tables[i:i + 1],
                             max_query_len=end - start, max_seq_len=meta.seq_lens_host[i],
                             query_lens_host=[end - start], seq_lens_host=[meta.seq_lens_host[i]],
                             num_decodes=int(end - start == 1))
        alone = reference.paged_attention(batch.query[start:end], batch.k_cache, batch.v_cache, alone_meta,
                                          batch.scale)
        assert torch.equal(together[start:end], alone), f"sequence {i}"
    assert_matches(unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                     split_kv=False), batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv{h[2]}d")
def test_split_kv_decode(heads: tuple[int, int, int], dtype: torch.dtype, paged_batch, seed_of) -> None:
    num_heads, num_kv_heads, head_dim = heads
    batch = paged_batch([1, 1, 1], [0, 90, 300], num_heads, num_kv_heads, head_dim, dtype,
                        seed=seed_of(heads, dtype))
    assert use_split_kv(batch.meta, num_kv_heads)
    assert_matches(unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale), batch)


def test_split_kv_with_a_preallocated_workspace(paged_batch) -> None:
    """A workspace sized for a bigger batch, with few segments so each segment covers several KV tiles."""
    batch = paged_batch([1, 1], [200, 33], 4, 2, 24, torch.float16, seed=11)
    workspace = SplitKVWorkspace.allocate(8, 4, padded_head_dim(24), "cpu", segments=4)
    workspace.out.fill_(float("nan"))  # stale contents must never leak into the result
    workspace.max.fill_(float("nan"))
    workspace.expsum.fill_(float("nan"))
    batch.meta.split_kv_workspace = workspace
    out = unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, split_kv=True)
    assert_matches(out, batch)
    assert not torch.isnan(workspace.max[:2]).all()  # it was used


@pytest.mark.parametrize("kind", ["decode", "mixed"])
def test_bf16_computes_in_fp32_under_the_interpreter(kind: str, paged_batch, seed_of) -> None:
    """The interpreter gets bf16 tl.dot wrong (triton #11584): the kernels upcast bf16 tiles there."""
    batch = paged_batch(*BATCHES[kind], 4, 2, 16, torch.bfloat16, seed=seed_of(kind, "bf16"))
    assert_matches(unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale), batch)


def test_split_kv_heuristic(paged_batch) -> None:
    decode = paged_batch([1] * 4, [10] * 4, 4, 2, 16, torch.float32, seed=0).meta
    mixed = paged_batch([1, 3], [10, 0], 4, 2, 16, torch.float32, seed=0).meta
    assert use_split_kv(decode, num_kv_heads=2)
    assert not use_split_kv(mixed, num_kv_heads=2)
    assert not use_split_kv(decode, num_kv_heads=64)  # 4 * 64 programs already fill the GPU


def test_split_kv_refuses_prefill(paged_batch) -> None:
    batch = paged_batch([2], [3], 2, 2, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="pure decode"):
        unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, split_kv=True)


@pytest.mark.gpu
@pytest.mark.parametrize(("kind", "split_kv"), [("decode", False), ("decode", True), ("mixed", None),
                                               ("many decodes and a chunk", None)])
def test_qwen_shapes_bf16_on_gpu(kind: str, split_kv: bool | None, paged_batch) -> None:
    """Qwen3-ASR decoder geometry: 16 query heads over 8 KV heads of 128, contexts up to 8k, bf16; the last kind
    has enough decodes for a launch of their own (decode_launch_min_seqs)."""
    if kind == "decode":
        query_lens, context_lens = [1] * 12, [1, 15, 16, 17, 100, 511, 512, 1000, 2047, 4096, 6000, 8191]
    elif kind == "many decodes and a chunk":
        decodes = AttentionTuning().decode_launch_min_seqs + 5
        query_lens, context_lens = [1] * decodes + [333], [(97 * i) % 3000 + 1 for i in range(decodes)] + [1200]
    else:
        query_lens, context_lens = [1, 1, 410, 300, 1, 77], [8000, 35, 0, 2000, 700, 4096]
    batch = paged_batch(query_lens, context_lens, 16, 8, 128, torch.bfloat16, seed=5, device="cuda")
    out = unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, split_kv=split_kv)
    assert_matches(out, batch)


@pytest.mark.gpu
def test_bf16_decode_with_a_register_cap_on_gpu(paged_batch) -> None:
    """The capped decode setting `make gpu-check` times (bench kernels --variants r96: 96 registers, which spills a
    little), compiled, against the reference at the Qwen3-ASR geometry."""
    context_lens = [1, 15, 16, 17, 100, 511, 512, 1000, 2047, 4096, 6000, 8191]
    batch = paged_batch([1] * len(context_lens), context_lens, 16, 8, 128, torch.bfloat16, seed=6, device="cuda")
    with attention_tuning(AttentionTuning(decode_max_registers=96)):
        out = unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, split_kv=False)
    assert_matches(out, batch)
