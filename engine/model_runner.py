from collections.abc import Mapping

import numpy as np
import torch

from engine.features import LogMelExtractor
from engine.model import Qwen3ASRModel
from engine.model_config import ModelConfig
from engine.sampler import sample
from kernels import AttentionBackend, AttentionMetadata
from scheduler import ScheduledChunk, SchedulerOutput, Sequence


class ModelRunner:
    """Runs one scheduled step on the device: encoder for new audio, one decoder forward, sampling.

    Knows tensors, not policy: what to run comes from the scheduler's output.
    """

    def __init__(self, model: Qwen3ASRModel, model_config: ModelConfig, features: LogMelExtractor,
                 backend: AttentionBackend, num_kv_blocks: int, block_size: int):
        self.model = model
        self.backend = backend
        self.features = features
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        text = model_config.text
        self.kv_cache = torch.zeros(2, text.num_layers, num_kv_blocks, block_size, text.num_kv_heads,
                                    text.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.k_cache = self.kv_cache[0, i]
            layer.self_attn.v_cache = self.kv_cache[1, i]
        self.encoder_cache: dict[int, torch.Tensor] = {}
        self.generators: dict[int, torch.Generator] = {}

    @staticmethod
    def kv_block_bytes(model_config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        text = model_config.text
        return 2 * text.num_layers * block_size * text.num_kv_heads * text.head_dim * dtype.itemsize

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput, waveforms: Mapping[int, np.ndarray]) -> dict[int, int]:
        """Returns the sampled token of every chunk that samples, by seq_id."""
        for seq_id in step.free_encoder:
            self.encoder_cache.pop(seq_id, None)
        if step.to_encode:
            self.encode(step.to_encode, waveforms)
        if not step.chunks:
            return {}
        token_ids, positions, audio_rows, audio_embeds, meta, sample_rows = self.prepare(step.chunks)
        embeds = self.model.embed(token_ids, audio_rows, audio_embeds)
        hidden = self.model(embeds, positions, meta, self.backend)
        sampling = [chunk.seq for chunk in step.chunks if chunk.samples]
        logits = self.model.compute_logits(hidden[sample_rows])
        tokens = sample(logits, [seq.sampling_params for seq in sampling],
                        [self.generator(seq) for seq in sampling])
        return dict(zip((seq.seq_id for seq in sampling), tokens.tolist()))

    def encode(self, seqs: list[Sequence], waveforms: Mapping[int, np.ndarray]) -> None:
        mels = self.features([waveforms[seq.seq_id] for seq in seqs])
        outputs = self.model.encode_audio(mels, self.backend)
        for seq, rows in zip(seqs, outputs.split([seq.audio.length for seq in seqs])):
            self.encoder_cache[seq.seq_id] = rows

    def forget(self, seq_id: int) -> None:
        self.encoder_cache.pop(seq_id, None)
        self.generators.pop(seq_id, None)

    def generator(self, seq: Sequence) -> torch.Generator | None:
        params = seq.sampling_params
        if params.greedy:
            return None
        if seq.seq_id not in self.generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else int(torch.randint(2**62, ()).item()))
            self.generators[seq.seq_id] = generator
        return self.generators[seq.seq_id]

    def prepare(self, chunks: list[ScheduledChunk]):
        token_ids: list[int] = []
        positions: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        audio_rows: list[np.ndarray] = []
        audio_embeds: list[torch.Tensor] = []
        query_lens, seq_lens, sample_rows = [], [], []
        max_blocks = max(len(chunk.seq.block_ids) for chunk in chunks)
        block_tables = np.zeros((len(chunks), max_blocks), dtype=np.int32)
        offset = 0
        for i, chunk in enumerate(chunks):
            seq, start, end = chunk.seq, chunk.start, chunk.end
            token_ids += seq_token_slice(seq, start, end)
            pos = np.arange(start, end)
            positions.append(pos)
            table = np.asarray(seq.block_ids, dtype=np.int64)
            slots.append(table[pos // self.block_size] * self.block_size + pos % self.block_size)
            block_tables[i, :len(table)] = table
            lo, hi = max(start, seq.audio.start), min(end, seq.audio.end)
            if lo < hi:
                audio_rows.append(np.arange(lo, hi) - start + offset)
                audio_embeds.append(self.encoder_cache[seq.seq_id][lo - seq.audio.start:hi - seq.audio.start])
            query_lens.append(end - start)
            seq_lens.append(end)
            offset += end - start
            if chunk.samples:
                sample_rows.append(offset - 1)
        device = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(np.concatenate(slots)).to(device),
            query_start_loc=torch.tensor(np.cumsum([0] + query_lens), dtype=torch.int32, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
            block_tables=torch.from_numpy(block_tables).to(device),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
        )
        rows = torch.from_numpy(np.concatenate(audio_rows)) if audio_rows else torch.empty(0, dtype=torch.long)
        embeds = torch.cat(audio_embeds) if audio_embeds else torch.empty(0, device=device)
        return (torch.tensor(token_ids, dtype=torch.long, device=device),
                torch.from_numpy(np.concatenate(positions)).to(device),
                rows.to(device), embeds, meta,
                torch.tensor(sample_rows, dtype=torch.long, device=device))


def seq_token_slice(seq: Sequence, start: int, end: int) -> list[int]:
    prompt = seq.prompt_token_ids
    if end <= len(prompt):
        return prompt[start:end]
    if start >= len(prompt):
        return seq.output_token_ids[start - len(prompt):end - len(prompt)]
    return prompt[start:] + seq.output_token_ids[:end - len(prompt)]
