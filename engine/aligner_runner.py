"""Runs the forced aligner on the device: one batched forward pass over a step's alignment jobs.

The aligner is a Qwen3-ASR model whose head classifies time slots; its input is a whole prompt at once (the piece's
audio, then the words with their `<timestamp>` slots), read once and never extended, so nothing is cached between
steps: the pass writes its keys and values into a scratch cache sized to the pass, in the same paged layout the
attention kernels read, and drops it after.
"""

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from qasr.engine.alignment import AlignmentProcessor
from qasr.engine.audio_encoder import num_audio_tokens
from qasr.engine.device_copy import to_device
from qasr.engine.features import FeatureConfig, LogMelExtractor
from qasr.engine.model import Qwen3ASRModel
from qasr.engine.model_config import load_model_config
from qasr.engine.model_loader import load_model
from qasr.engine.tokenizer import load_tokenizer
from qasr.kernels import AttentionMetadata, ModelOps, get_model_ops
from qasr.scheduler import AlignmentJob, AudioSpan


class AlignerRunner:

    def __init__(self, model: Qwen3ASRModel, features: LogMelExtractor, ops: ModelOps, block_size: int):
        if model.config.aligner is None:
            raise ValueError("AlignerRunner needs a forced aligner's model")
        self.model = model
        self.features = features
        self.ops = ops
        self.block_size = block_size
        self.timestamp_token_id = model.config.aligner.timestamp_token_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def align(self, jobs: list[AlignmentJob], waveforms: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """job_id -> the time class picked at each `<timestamp>` token of its prompt, in order."""
        logits = self.forward(jobs, waveforms)
        classes = torch.cat(logits).argmax(dim=-1).cpu().numpy() if logits else np.zeros(0, dtype=np.int64)
        counts = np.cumsum([0, *(len(rows) for rows in logits)])
        return {job.job_id: classes[counts[i]:counts[i + 1]] for i, job in enumerate(jobs)}

    @torch.inference_mode()
    def forward(self, jobs: list[AlignmentJob], waveforms: Mapping[int, np.ndarray]) -> list[torch.Tensor]:
        """Per job, the float32 class logits [timestamps, classes] at its `<timestamp>` tokens."""
        if not jobs:
            return []
        mels = self.features([waveforms[job.job_id] for job in jobs])
        audio_embeds = self.model.encode_audio(mels, self.ops)
        lengths = [job.num_tokens for job in jobs]
        blocks = [math.ceil(n / self.block_size) for n in lengths]
        first_block = np.cumsum([0, *blocks])
        token_ids = np.concatenate([np.asarray(job.prompt_token_ids, dtype=np.int64) for job in jobs])
        positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        # job i's tokens fill its own run of blocks from the start: slot = first block * block_size + position
        slots = np.concatenate([first_block[i] * self.block_size + np.arange(n, dtype=np.int64)
                                for i, n in enumerate(lengths)])
        block_tables = np.zeros((len(jobs), max(blocks)), dtype=np.int32)
        for i, n in enumerate(blocks):
            block_tables[i, :n] = np.arange(first_block[i], first_block[i] + n)
        starts = np.cumsum([0, *lengths])
        audio_rows = np.concatenate([starts[i] + np.arange(job.audio.start, job.audio.end)
                                     for i, job in enumerate(jobs)])
        if len(audio_rows) != len(audio_embeds):
            raise ValueError(f"the prompts hold {len(audio_rows)} audio placeholders for {len(audio_embeds)} "
                             "encoder outputs")
        meta = AttentionMetadata(
            slot_mapping=self.to_device(slots),
            query_start_loc=self.to_device(starts.astype(np.int32)),
            seq_lens=self.to_device(np.asarray(lengths, dtype=np.int32)),
            block_tables=self.to_device(block_tables),
            max_query_len=max(lengths), max_seq_len=max(lengths),
            query_lens_host=lengths, seq_lens_host=lengths)
        self._attach_scratch_cache(int(first_block[-1]))
        try:
            token_ids_device = self.to_device(token_ids)
            embeds = self.model.embed(token_ids_device, self.to_device(audio_rows), audio_embeds)
            hidden = self.model(embeds, self.to_device(positions), meta, self.ops)
        finally:
            self._attach_scratch_cache(0)
        is_timestamp = token_ids == self.timestamp_token_id
        logits = self.model.compute_logits(hidden[self.to_device(np.flatnonzero(is_timestamp))]).float()
        return list(logits.split([int(is_timestamp[starts[i]:starts[i + 1]].sum()) for i in range(len(jobs))]))

    @torch.inference_mode()
    def profile_peak_bytes(self, num_tokens: int, audio_seconds: float) -> int:
        """Peak CUDA memory of one pass over `num_tokens` prompt tokens, `audio_seconds` of audio among them (the
        largest pass a step sends), measured on silence and placeholder words: what the KV pool must leave free."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        samples = np.zeros(int(audio_seconds * self.features.config.sample_rate), dtype=np.float32)
        audio_tokens = num_audio_tokens(self.features.config.num_frames(len(samples)))
        audio_pad = self.model.config.audio_token_id
        prompt = [audio_pad] * (audio_tokens + 2) + [self.timestamp_token_id] * max(2, num_tokens - audio_tokens - 2)
        job = AlignmentJob(prompt, AudioSpan(1, audio_tokens, b""))
        self.forward([job], {job.job_id: samples})
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - baseline

    def _attach_scratch_cache(self, num_blocks: int) -> None:
        """Gives every layer a cache of `num_blocks` blocks for one pass (0: none, freeing it)."""
        text = self.model.config.text
        shape = (2, text.num_layers, num_blocks, self.block_size, text.num_kv_heads, text.head_dim)
        cache = torch.empty(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.model.model.layers):
            layer.self_attn.k_cache = cache[0, i]
            layer.self_attn.v_cache = cache[1, i]

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)


def load_aligner(path: Path) -> tuple[AlignmentProcessor, AlignerRunner]:
    """A forced aligner checkpoint alone, float32 on the CPU with the torch ops, outside any engine (the demo
    aligner's evaluation and the tests' reference runs)."""
    config = load_model_config(path, aligner=True)
    features = FeatureConfig.from_checkpoint(path)
    model = load_model(path, config, torch.device("cpu"), torch.float32)
    runner = AlignerRunner(model, LogMelExtractor(features), get_model_ops("torch", torch.device("cpu")), 16)
    return AlignmentProcessor(load_tokenizer(path), config, features), runner
