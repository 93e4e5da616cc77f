import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from qasr.engine.block_tables import BlockTables
from qasr.engine.decode_graphs import DecodeGraphs
from qasr.engine.device_copy import to_device
from qasr.engine.encoder_graphs import EncoderGraphs
from qasr.engine.features import LogMelExtractor
from qasr.engine.mixed_graphs import MixedStepGraphs
from qasr.engine.model import Qwen3ASRModel
from qasr.engine.sampler import sample
from qasr.kernels import AttentionMetadata, ModelOps
from qasr.kernels.attention_metadata import split_kv_max_seqs
from qasr.kernels.kv_cache_dtype import is_fp8, resolve_kv_cache_dtype
from qasr.scheduler import PENDING_TOKEN, SchedulerOutput, Sequence


@dataclass(frozen=True, slots=True)
class GraphPlan:
    """What the CUDA graphs cover: pure-decode batches up to max_decode_batch; if max_mixed_tokens, steps with
    prefill chunks of up to that many tokens and max_num_seqs sequences (0: those run eagerly); and if
    max_encoder_chunks, the audio encoder's passes of up to that many chunks."""

    max_decode_batch: int
    max_model_len: int
    max_num_seqs: int = 0
    max_mixed_tokens: int = 0
    max_encoder_chunks: int = 0  # audio encoder passes of up to this many 1 s chunks (0: eager)


@dataclass(slots=True)
class StepInputs:
    token_ids: torch.Tensor
    positions: torch.Tensor
    audio_rows: torch.Tensor  # rows of this step's tokens that take encoder outputs
    audio_embeds: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor | None  # rows whose logits are sampled; None: every row, in order
    sampled_seqs: list[Sequence]  # the sequence of each sampled row
    is_decode: bool  # one new token per sequence, every one sampled, no audio: what a decode graph replays


@dataclass(slots=True)
class PendingTokens:
    """Sampled tokens on their way to the host, one for each of `seqs`; result() waits for the copy (the step's
    only sync)."""

    seqs: list[Sequence]
    tokens: torch.Tensor
    copied: torch.cuda.Event | None = None

    def result(self) -> list[int]:
        if self.copied is not None:
            self.copied.synchronize()
        return self.tokens.tolist()


class ModelRunner:
    """Runs one scheduled step on the device: encoder for new audio, one decoder forward, sampling.

    Knows tensors, not policy: what to run comes from the scheduler's output.
    """

    def __init__(self, model: Qwen3ASRModel, features: LogMelExtractor, ops: ModelOps, block_size: int,
                 kv_cache_dtype: str = "auto", seed: int = 0):
        self.model = model
        self.ops = ops
        self.features = features
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.kv_cache_dtype = resolve_kv_cache_dtype(kv_cache_dtype, self.dtype)
        if (is_fp8(self.kv_cache_dtype) and ops.name == "triton" and self.device.type == "cuda"
                and torch.cuda.get_device_capability(self.device) < (8, 9)):
            raise ValueError("kv_cache_dtype='fp8' with the triton backend needs a GPU of compute capability 8.9 "
                             "or newer (Ada, Hopper) for Triton's e4m3 conversions; use kv_cache_dtype='auto'")
        self.kv_cache = torch.empty(0)
        self.decode_graphs: DecodeGraphs | None = None
        self.mixed_graphs: MixedStepGraphs | None = None
        self.encoder_graphs: EncoderGraphs | None = None
        self.encoder_cache: dict[int, torch.Tensor] = {}
        self.generators: dict[int, torch.Generator] = {}
        self.default_seeds = np.random.default_rng(seed)  # for requests that sample without a seed of their own
        # the last launch's sampled ids stay on the device: the next step's decodes read their input from here
        self.last_sampled = torch.empty(0, dtype=torch.long, device=self.device)
        self.last_sampled_row: dict[int, int] = {}
        self.row_numbers = list(range(1024))  # 0, 1, 2, ...: grown as batches grow
        self.block_tables = BlockTables()

    def kv_block_bytes(self) -> int:
        text = self.model.config.text
        return (2 * text.num_layers * self.block_size * text.num_kv_heads * text.head_dim
                * self.kv_cache_dtype.itemsize)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        text = self.model.config.text
        shape = (2, text.num_layers, num_blocks, self.block_size, text.num_kv_heads, text.head_dim)
        if self.device.type == "cpu":
            self.kv_cache = untouched_zeros(shape, self.kv_cache_dtype)
        else:
            self.kv_cache = torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device)
        for i, layer in enumerate(self.model.model.layers):
            layer.self_attn.k_cache = self.kv_cache[0, i]
            layer.self_attn.v_cache = self.kv_cache[1, i]

    def capture_cuda_graphs(self, plan: GraphPlan) -> int:
        """Captures the graphs `plan` names against the current cache; returns the device memory they took (static
        buffers, the graphs' pools, the driver's share), as the device reports it."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        free_before, _ = torch.cuda.mem_get_info(self.device)
        blocks_per_seq = math.ceil(plan.max_model_len / self.block_size)
        self.decode_graphs = DecodeGraphs(self.model, self.ops, plan.max_decode_batch, blocks_per_seq, self.block_size)
        self.decode_graphs.capture()
        pool = torch.cuda.graph_pool_handle()  # the decoder's and the encoder's graphs of full mode share one
        if plan.max_mixed_tokens:
            self.mixed_graphs = MixedStepGraphs(self.model, self.ops, plan.max_num_seqs, plan.max_mixed_tokens,
                                                blocks_per_seq, self.block_size)
            self.mixed_graphs.capture(pool)
        if plan.max_encoder_chunks:
            self.encoder_graphs = EncoderGraphs(self.model.audio_tower, self.ops, plan.max_encoder_chunks)
            self.encoder_graphs.capture(pool)
        # the warm-ups ran on the capture's side stream, whose freed blocks stay cached there: not the graphs' memory
        torch.cuda.empty_cache()
        free_after, _ = torch.cuda.mem_get_info(self.device)
        return free_before - free_after

    def profile_cuda_graph_bytes(self, plan: GraphPlan) -> int:
        """Memory the graphs will take, measured by capturing them against a throwaway one-block cache (what a graph
        holds does not depend on the cache's size) and releasing them again."""
        self.allocate_kv_cache(1)
        used = self.capture_cuda_graphs(plan)
        self.decode_graphs = self.mixed_graphs = self.encoder_graphs = None
        self.kv_cache = torch.empty(0)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        return used

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compiles every attention kernel variant a step can pick (split-KV and unified decode, short mixed
        queries, prefill) before serving, so no request waits on a compile. Stores nothing (slot -1)."""
        decode_batch = split_kv_max_seqs(self.model.config.text.num_kv_heads) + 1
        for query_lens in ([1], [1] * decode_batch, [1, 2], [64]):
            self._forward_without_cache(query_lens)

    def _forward_without_cache(self, query_lens: list[int]) -> torch.Tensor:
        """One decoder forward over sequences whose keys are only their own new tokens, all read through
        block 0 of the cache and none written: for profiling and warm-up."""
        num_tokens = sum(query_lens)
        meta = AttentionMetadata(
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.long, device=self.device),
            query_start_loc=self.to_device(np.cumsum([0, *query_lens], dtype=np.int32)),
            seq_lens=self.to_device(np.asarray(query_lens, dtype=np.int32)),
            block_tables=torch.zeros(len(query_lens), math.ceil(max(query_lens) / self.block_size),
                                     dtype=torch.int32, device=self.device),
            max_query_len=max(query_lens), max_seq_len=max(query_lens), query_lens_host=list(query_lens),
            seq_lens_host=list(query_lens))
        token_ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        return self.model(self.model.model.embed_tokens(token_ids), token_ids, meta, self.ops)

    @torch.inference_mode()
    def profile_peak_activation_bytes(self, num_tokens: int, num_encoder_tokens: int, num_sampled: int) -> int:
        """Peak CUDA memory of the largest step the scheduler can send (a full token budget of prefill, the
        largest encoder pass, logits for every running sequence), run against a throwaway one-block cache."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        self.allocate_kv_cache(1)
        seconds = max(1, num_encoder_tokens // 13)
        mels = self.features([np.zeros(seconds * self.features.config.sample_rate, dtype=np.float32)])
        self.model.encode_audio(mels, self.ops)
        hidden = self._forward_without_cache([num_tokens])
        self.model.compute_logits(hidden[-min(num_tokens, num_sampled):])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - baseline
        self.kv_cache = torch.empty(0)
        torch.cuda.empty_cache()
        return peak

    @torch.inference_mode()
    def launch(self, step: SchedulerOutput, waveforms: Mapping[int, np.ndarray]) -> PendingTokens:
        """Enqueues the step's device work and returns before it finishes, so the host can do other work."""
        for seq_id in step.free_encoder:
            self.encoder_cache.pop(seq_id, None)
        if step.to_encode:
            self.encode(step.to_encode, waveforms)
        if not step.chunks:
            self.last_sampled_row = {}
            return PendingTokens([], torch.empty(0, dtype=torch.long))
        inputs = self.prepare(step)
        # what sampling needs of the sequences, read while prepare has them in the host's caches (on the CPU the
        # forward between would evict them)
        sampling = inputs.sampled_seqs
        params = [seq.sampling_params for seq in sampling]
        generators = [None if p.greedy else self.generator(seq) for seq, p in zip(sampling, params)]
        sampled_row = dict(zip([seq.seq_id for seq in sampling], self.row_numbers))
        graphs, mixed_graphs = self.decode_graphs, self.mixed_graphs
        if graphs is not None and inputs.is_decode and graphs.padded_size(inputs.meta.num_seqs):
            hidden = graphs.run(inputs.token_ids, inputs.positions, inputs.meta)
        else:
            embeds = self.model.embed(inputs.token_ids, inputs.audio_rows, inputs.audio_embeds)
            if mixed_graphs is not None and mixed_graphs.padded_size(len(embeds), inputs.meta.num_seqs):
                hidden = mixed_graphs.run(embeds, inputs.positions, inputs.meta)
            else:
                hidden = self.model(embeds, inputs.positions, inputs.meta, self.ops)
        logits = self.model.compute_logits(hidden if inputs.sample_rows is None else hidden[inputs.sample_rows])
        tokens = sample(logits, params, generators)
        self.last_sampled, self.last_sampled_row = tokens, sampled_row
        if self.device.type != "cuda":
            return PendingTokens(sampling, tokens)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(self.device))
        return PendingTokens(sampling, host, copied)

    def encode(self, seqs: list[Sequence], waveforms: Mapping[int, np.ndarray]) -> None:
        mels = self.features([waveforms[seq.seq_id] for seq in seqs])
        graphs = self.encoder_graphs
        outputs = self.model.encode_audio(mels, self.ops) if graphs is None else graphs.encode(mels)
        for seq, rows in zip(seqs, outputs.split([seq.audio.length for seq in seqs])):
            self.encoder_cache[seq.seq_id] = rows.clone() if len(seqs) > 1 else rows  # free the batch as pieces finish

    def forget(self, seq_id: int) -> None:
        self.encoder_cache.pop(seq_id, None)
        self.generators.pop(seq_id, None)
        self.block_tables.release(seq_id)

    def generator(self, seq: Sequence) -> torch.Generator | None:
        params = seq.sampling_params
        if params.greedy:
            return None
        if seq.seq_id not in self.generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else int(self.default_seeds.integers(2**62)))
            self.generators[seq.seq_id] = generator
        return self.generators[seq.seq_id]

    def prepare(self, step: SchedulerOutput) -> StepInputs:
        # per sequence only what numpy cannot take at once; positions, slots and lengths are then whole-array
        # operations, and the block tables are rows kept between steps. The decodes, most of a step, come first and
        # take a comprehension per field
        chunks, num_decodes = step.chunks, step.num_decodes
        decodes = chunks[:num_decodes]
        seqs = [chunk.seq for chunk in decodes]
        starts = [chunk.start for chunk in decodes]
        rows = self.block_tables.rows_of(seqs)
        token_ids = [seq.token_id_at(start) for seq, start in zip(seqs, starts)]
        # rows whose input token the previous launch sampled, and the rows of that launch that hold them
        pending_rows = [row for row, token in enumerate(token_ids) if token == PENDING_TOKEN]
        last_sampled_row = self.last_sampled_row
        pending_sources = [last_sampled_row[seqs[row].seq_id] for row in pending_rows]
        query_lens = [1] * num_decodes
        sample_rows = list(range(num_decodes))
        sampled_seqs = seqs[:]
        audio_rows: list[np.ndarray] = []
        audio_embeds: list[torch.Tensor] = []
        offset = num_decodes
        for chunk in chunks[num_decodes:]:
            seq, start, end = chunk.seq, chunk.start, chunk.end
            rows.append(self.block_tables.row(seq))
            starts.append(start)
            token_ids += seq.token_ids_slice(start, end)
            if token_ids[-1] == PENDING_TOKEN:  # only ever the one token of a decode
                pending_rows.append(offset + end - start - 1)
                pending_sources.append(last_sampled_row[seq.seq_id])
            lo, hi = max(start, seq.audio.start), min(end, seq.audio.end)
            if lo < hi:
                audio_rows.append(np.arange(lo, hi) - start + offset)
                audio_embeds.append(self.encoder_cache[seq.seq_id][lo - seq.audio.start:hi - seq.audio.start])
            query_lens.append(end - start)
            offset += end - start
            if chunk.samples:
                sample_rows.append(offset - 1)
                sampled_seqs.append(seq)
        bs = self.block_size
        num_chunks = len(chunks)
        one_token_each = offset == num_chunks
        starts_array = np.asarray(starts, dtype=np.int64)
        if one_token_each:
            positions, lens = starts_array, 1
            token_chunks = np.arange(num_chunks)
            one_token_queries = num_chunks
        else:
            lens = np.asarray(query_lens, dtype=np.int64)
            one_token_queries = int(np.argmax(lens != 1))  # leading: the scheduler puts decodes first
            token_chunks = np.repeat(np.arange(num_chunks), lens)
            # a token's position: its row, less its chunk's first row, plus its chunk's start
            positions = np.arange(offset) + np.repeat(starts_array - (np.cumsum(lens) - lens), lens)
        seq_lens_array = starts_array + lens
        seq_lens = seq_lens_array.tolist()
        max_seq_len = max(seq_lens)
        block_tables = self.block_tables.rows(rows, -(-max_seq_len // bs))
        slots = block_tables[token_chunks, positions // bs].astype(np.int64) * bs + positions % bs
        if len(self.row_numbers) <= offset:
            self.row_numbers = list(range(2 * offset))
        meta = AttentionMetadata(
            slot_mapping=self.to_device(slots),
            query_start_loc=self.to_device(np.arange(num_chunks + 1, dtype=np.int32) if one_token_each
                                           else np.cumsum([0] + query_lens, dtype=np.int32)),
            seq_lens=self.to_device(seq_lens_array.astype(np.int32)),
            block_tables=self.to_device(block_tables),
            max_query_len=max(query_lens),
            max_seq_len=max_seq_len,
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            split_kv_workspace=self.decode_graphs.workspace if self.decode_graphs else None,
            num_decodes=one_token_queries,
        )
        # pending rows 0..k-1 reading the last step's rows 0..k-1 (the decodes ahead of the prefills, in the same
        # order): a slice instead of index tensors, or the last step's tokens themselves when every row is one
        num_pending = len(pending_rows)
        in_order = num_pending > 0 and pending_rows == pending_sources == self.row_numbers[:num_pending]
        if in_order and num_pending == offset == len(self.last_sampled):
            token_ids_device = self.last_sampled
        else:
            token_ids_device = self.to_device(np.asarray(token_ids, dtype=np.int64))
            if in_order:
                token_ids_device[:num_pending] = self.last_sampled[:num_pending]
            elif num_pending:
                token_ids_device[self.to_device(np.asarray(pending_rows, dtype=np.int64))] = \
                    self.last_sampled[self.to_device(np.asarray(pending_sources, dtype=np.int64))]
        return StepInputs(
            token_ids=token_ids_device,
            positions=self.to_device(positions),
            audio_rows=self.to_device(np.concatenate(audio_rows) if audio_rows else np.zeros(0, dtype=np.int64)),
            audio_embeds=torch.cat(audio_embeds) if audio_embeds else torch.empty(0, device=self.device),
            meta=meta,
            sample_rows=None if sample_rows == self.row_numbers[:offset] else self.to_device(
                np.asarray(sample_rows, dtype=np.int64)),
            sampled_seqs=sampled_seqs,
            is_decode=meta.max_query_len == 1 and not audio_rows and len(sample_rows) == len(chunks),
        )

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)


def untouched_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros in host memory that become resident only where written: numpy's zeros are calloc's, which hands a
    large block over as fresh zero pages without touching them (torch.zeros writes every byte). A CPU KV pool then
    costs memory as its blocks fill, not all at once."""
    return torch.from_numpy(np.zeros(math.prod(shape) * dtype.itemsize, dtype=np.uint8)).view(dtype).view(shape)
