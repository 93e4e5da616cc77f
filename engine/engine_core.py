"""The engine core: schedule, launch, update. Sequences in; each step, the tokens of the step before it out.

It owns the model runner (and with it the device) and the scheduler, sizes the KV cache and captures the decode
graphs; with a forced aligner loaded it also runs the queued alignment jobs, one batched pass per step. It knows
nothing of requests, text or audio files.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qasr.engine.aligner_runner import AlignerRunner
from qasr.engine.config import EngineConfig
from qasr.engine.features import FeatureConfig, LogMelExtractor
from qasr.engine.model_config import ModelConfig
from qasr.engine.model_loader import load_model, resolve_device, resolve_dtype
from qasr.engine.model_runner import GraphPlan, ModelRunner, PendingTokens
from qasr.engine.request import InvalidRequest, output_token_cap
from qasr.kernels import get_model_ops
from qasr.scheduler import (
    AlignmentJob,
    AlignmentQueue,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    Sequence,
    SequenceStatus,
)

# decode steps of more sequences run eagerly. vLLM stops at 512; a model of 0.6-1.7B is launch-bound further: an
# eager step takes the host some 300 launches (the H200's eager steps enqueued in 16-22 ms with a short prefill),
# where the device reads 1.2-4 GB of weights and the sequences' KV in a few ms
MAX_GRAPH_BATCH_SIZE = 1024
# encoder passes of more audio run eagerly: their device work dwarfs their launches, and the graphs' memory pool holds
# the largest one's activations
MAX_ENCODER_GRAPH_CHUNKS = 64


@dataclass(slots=True)
class EngineCoreOutputs:
    """One core step's news: the tokens of the step that came back (a sequence that stopped before they did has
    none), the sequences that stopped in it, and the sequences the step just launched took off the waiting
    queue, scheduled at `scheduled_time`."""

    sampled: dict[int, int] = field(default_factory=dict)  # seq_id -> token
    finished: list[Sequence] = field(default_factory=list)
    aligned: dict[int, np.ndarray] = field(default_factory=dict)  # alignment job_id -> its time classes
    admitted: list[Sequence] = field(default_factory=list)
    scheduled_time: float = 0.0


@dataclass(frozen=True, slots=True)
class AlignerCheckpoint:
    path: Path
    config: ModelConfig
    features: FeatureConfig


@dataclass(slots=True)
class GraphMemory:
    """Device memory of the CUDA graphs: measured before sizing the KV pool, and when captured for real."""

    profiled_bytes: int = 0
    captured_bytes: int = 0


class EngineCore:

    def __init__(self, config: EngineConfig, model_path: Path, model_config: ModelConfig, features: FeatureConfig,
                 max_model_len: int, longest_prompt_tokens: int, aligner: AlignerCheckpoint | None = None):
        """`longest_prompt_tokens`: the prompt of the longest audio piece (max_piece_seconds) without context; the
        KV cache is sized for max_num_seqs such sequences with a default-length output. `aligner`: a forced
        aligner to load beside the model, before the KV cache takes the memory left."""
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # Triton launches on the current device
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.max_model_len = max_model_len
        self.longest_prompt_tokens = longest_prompt_tokens
        model = load_model(model_path, model_config, self.device, self.dtype)
        ops = get_model_ops(config.attention_backend, self.device)
        self.runner = ModelRunner(model, LogMelExtractor(features, self.device), ops, config.block_size,
                                  config.kv_cache_dtype, seed=config.seed)
        self.aligner: AlignerRunner | None = None
        if aligner is not None:
            self.aligner = AlignerRunner(load_model(aligner.path, aligner.config, self.device, self.dtype),
                                         LogMelExtractor(aligner.features, self.device), ops, config.block_size)
        if self.device.type == "cuda":
            # tables for every position before the memory is profiled and the CUDA graphs capture them: on a GPU
            # they never grow while serving (on the CPU they grow as positions come, see RotaryEmbedding)
            model.model.rotary.tables(max_model_len)
            if self.aligner is not None:
                self.aligner.model.model.rotary.tables(max_model_len)
        self.alignments = AlignmentQueue(config.max_num_batched_tokens)
        self.alignment_waveforms: dict[int, np.ndarray] = {}  # job_id -> its piece's samples
        self.graph_memory = GraphMemory()
        num_blocks = self._num_kv_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        if self.device.type == "cuda" and self.runner.ops.name == "triton":
            self.runner.warm_up()
        if self.uses_cuda_graphs:
            self.graph_memory.captured_bytes = self.runner.capture_cuda_graphs(self.graph_plan)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_encoder_tokens=config.max_num_encoder_tokens or config.max_num_batched_tokens,
            num_blocks=num_blocks,
            block_size=config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            enable_chunked_prefill=config.enable_chunked_prefill,
            max_model_len=self.max_model_len,
            reuse_before_untouched=self.device.type == "cpu",  # see model_runner.untouched_zeros
        ))
        self.waveforms: dict[int, np.ndarray] = {}  # seq_id -> its piece's samples, until the sequence ends
        self.in_flight: tuple[SchedulerOutput, PendingTokens] | None = None

    @property
    def longest_alignment_tokens(self) -> int:
        """The longest piece's audio and template tokens, and each token a transcript can have as a word with two
        `<timestamp>`s: an alignment job is never longer (the queue runs one alone if it exceeds the budget)."""
        return self.longest_prompt_tokens + 3 * output_token_cap(self.config.max_piece_seconds)

    @property
    def graph_plan(self) -> GraphPlan:
        config = self.config
        full = config.cuda_graph_mode == "full"
        return GraphPlan(max_decode_batch=min(config.max_num_seqs, MAX_GRAPH_BATCH_SIZE),
                         max_model_len=self.max_model_len, max_num_seqs=config.max_num_seqs if full else 0,
                         max_mixed_tokens=config.max_num_batched_tokens if full else 0,
                         max_encoder_chunks=MAX_ENCODER_GRAPH_CHUNKS if full else 0)

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.device.type == "cuda" and not self.config.enforce_eager and self.runner.ops.name == "triton"

    def _num_kv_blocks(self) -> int:
        """num_kv_blocks if given; else what max_num_seqs sequences of the longest piece with a default-length
        output hold, capped by the memory left after the weights, the largest step's activations and the CUDA graphs
        (on CPU: cpu_kv_cache_gib)."""
        config = self.config
        if config.num_kv_blocks:
            return config.num_kv_blocks
        block_bytes = self.runner.kv_block_bytes()
        sequence_tokens = min(self.longest_prompt_tokens + SamplingParams().max_tokens, self.max_model_len)
        needed = config.max_num_seqs * -(-sequence_tokens // config.block_size)
        if self.device.type == "cuda":
            encoder_tokens = max(config.max_num_encoder_tokens or config.max_num_batched_tokens,
                                 self.longest_prompt_tokens)
            activations = self.runner.profile_peak_activation_bytes(
                config.max_num_batched_tokens, encoder_tokens, config.max_num_seqs)
            if self.aligner is not None:  # its pass runs after the step's: the larger of the two peaks counts
                activations = max(activations, self.aligner.profile_peak_bytes(
                    max(config.max_num_batched_tokens, self.longest_alignment_tokens), config.max_piece_seconds))
            if self.uses_cuda_graphs:
                self.graph_memory.profiled_bytes = self.runner.profile_cuda_graph_bytes(self.graph_plan)
            graphs = self.graph_memory.profiled_bytes
            free, total = torch.cuda.mem_get_info(self.device)
            budget = total * config.gpu_memory_utilization - (total - free) - activations - graphs
        else:
            budget = config.cpu_kv_cache_gib * (1 << 30)
        num_blocks = min(int(budget // block_bytes), needed)
        if num_blocks < 1 and self.device.type != "cuda":
            raise ValueError(f"cpu_kv_cache_gib={config.cpu_kv_cache_gib:g} holds no KV cache block "
                             f"({block_bytes} bytes); raise it")
        if num_blocks < 1:
            raise RuntimeError("no memory left for the KV cache; lower max_num_batched_tokens or raise "
                               "gpu_memory_utilization")
        return num_blocks

    def add(self, sequences: list[Sequence], waveforms: list[np.ndarray]) -> None:
        """Queues a request's sequences, each with its piece's samples: all of them, or none (a ValueError says
        why the scheduler refused one)."""
        added: list[Sequence] = []
        try:
            for seq in sequences:
                self.scheduler.add(seq)
                added.append(seq)
        except ValueError as error:  # too long for the model, the KV pool or a step: the audio's length
            for seq in added:
                self.scheduler.abort(seq.seq_id)
            raise InvalidRequest(str(error), field="audio") from error
        for seq, samples in zip(sequences, waveforms):
            self.waveforms[seq.seq_id] = samples

    def abort(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            self.scheduler.abort(seq_id)
            self._forget(seq_id)

    def add_alignments(self, jobs: list[tuple[AlignmentJob, np.ndarray]]) -> None:
        """Queues forced-alignment jobs, each with its piece's samples."""
        if self.aligner is None:
            raise RuntimeError("no forced aligner is loaded")
        for job, samples in jobs:
            self.alignments.add(job)
            self.alignment_waveforms[job.job_id] = samples

    def abort_alignments(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            self.alignments.abort(job_id)
            self.alignment_waveforms.pop(job_id, None)

    @property
    def has_alignments(self) -> bool:
        return len(self.alignments) > 0

    def step(self) -> EngineCoreOutputs:
        """Schedules and launches step N while the device still runs step N-1, then takes N-1's tokens: the
        caller turns them into text while the device runs N, and outputs trail the launches by one step."""
        step = self.scheduler.schedule()
        outputs = EngineCoreOutputs(admitted=step.admitted, scheduled_time=time.monotonic())
        pending = self.runner.launch(step, self.waveforms)
        if self.aligner is not None and self.alignments:
            # queued behind the launched step on the device; its result waits for both
            jobs = self.alignments.take()
            outputs.aligned = self.aligner.align(jobs, self.alignment_waveforms)
            for job in jobs:
                del self.alignment_waveforms[job.job_id]
        previous, self.in_flight = self.in_flight, (step, pending)
        if previous is None:
            return outputs
        previous_step, previous_pending = previous
        # a sequence that stopped before this step's results came back sampled once more: drop that token
        outputs.sampled = {seq.seq_id: token for seq, token in zip(previous_pending.seqs, previous_pending.result())
                           if seq.status is not SequenceStatus.FINISHED}
        outputs.finished = self.scheduler.update(previous_step, outputs.sampled)
        for seq in outputs.finished:
            self._forget(seq.seq_id)
        return outputs

    def _forget(self, seq_id: int) -> None:
        self.waveforms.pop(seq_id, None)
        self.runner.forget(seq_id)
