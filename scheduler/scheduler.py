from collections import deque
from dataclasses import dataclass, field
from itertools import chain

from qasr.scheduler.block_manager import BlockManager
from qasr.scheduler.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_num_encoder_tokens: int = 8192
    num_blocks: int = 1024
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_model_len: int = 65536
    reuse_before_untouched: bool = False  # the KV pool becomes resident only where written (BlockManager)

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_num_encoder_tokens", "num_blocks",
                     "block_size", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int
    num_tokens: int
    samples: bool  # the chunk reaches the sequence's end: the engine samples a token from its last position

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    to_encode: list[Sequence] = field(default_factory=list)
    free_encoder: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)  # taken off the waiting queue by this step
    # the leading chunks that are decodes: one token each, the sequence's last (sampled), past its audio
    num_decodes: int = 0
    num_batched_tokens: int = 0
    num_encoder_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching,
                                          config.reuse_before_untouched)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.encoder_outputs_to_free: list[int] = []

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.block_manager.usage

    def add(self, seq: Sequence) -> None:
        cfg = self.config
        num_prompt, max_tokens = seq.num_prompt_tokens, seq.sampling_params.max_tokens
        if num_prompt + max_tokens > cfg.max_model_len:
            raise ValueError(
                f"prompt ({num_prompt} tokens) + max_tokens ({max_tokens}) exceeds max_model_len ({cfg.max_model_len})"
            )
        # the last sampled token is never fed back, so its KV is never stored
        num_blocks = self.block_manager.num_blocks_for(num_prompt + max_tokens - 1)
        if num_blocks > cfg.num_blocks:
            raise ValueError(
                f"prompt ({num_prompt} tokens) + max_tokens ({max_tokens}) needs up to {num_blocks} KV blocks of "
                f"{cfg.block_size} tokens, but the pool has only {cfg.num_blocks}"
            )
        if not cfg.enable_chunked_prefill and num_prompt > cfg.max_num_batched_tokens:
            raise ValueError(
                f"prompt ({num_prompt} tokens) exceeds max_num_batched_tokens "
                f"({cfg.max_num_batched_tokens}) and chunked prefill is disabled"
            )
        if seq.status != SequenceStatus.WAITING or seq.block_ids or seq.num_output_tokens:
            raise ValueError(f"sequence {seq.seq_id} was already scheduled")
        self.waiting.append(seq)

    def abort(self, seq_id: int) -> Sequence | None:
        seq = next((s for s in chain(self.running, self.waiting) if s.seq_id == seq_id), None)
        if seq is None:
            return None
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        self._release_encoder_output(seq, self.encoder_outputs_to_free)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "abort"
        return seq

    def schedule(self) -> SchedulerOutput:
        """Picks the next step. It may run before the previous step's tokens are known (the engine overlaps
        scheduling with the device): scheduled tokens count as computed at once, and a chunk that samples
        leaves a pending token that update() resolves; a decode whose input is pending is scheduled anyway."""
        out = SchedulerOutput(free_encoder=self.encoder_outputs_to_free)
        self.encoder_outputs_to_free = []
        self._schedule_running(out)
        if not out.preempted:
            self._schedule_waiting(out)
        return out

    def _schedule_running(self, out: SchedulerOutput) -> None:
        # decodes first: a long chunked prefill must not take the budget of the one-token steps behind it.
        # Victims come from the end of this order, so they are never sequences already scheduled this step.
        decodes, prefills = [], []
        for seq in self.running:
            (prefills if seq.num_tokens - seq.num_computed_tokens > 1 else decodes).append(seq)
        queue = decodes + prefills
        budget, block_size = self.config.max_num_batched_tokens, self.block_manager.block_size
        chunks = out.chunks
        i = 0
        while i < len(queue) and out.num_batched_tokens < budget:
            seq = queue[i]
            i += 1
            start, num_tokens = seq.num_computed_tokens, seq.num_tokens
            if seq.num_pending_tokens and num_tokens >= seq.max_num_tokens:
                continue  # awaits its last token (Sequence.awaits_last_token, inlined)
            if start + 1 == num_tokens and start < len(seq.block_ids) * block_size and start >= seq.audio.end:
                # the common case, a decode whose token fits a block it has: nothing to allocate or encode
                # (_add_chunk, inlined: this runs for every decoding sequence every step)
                if out.num_decodes == len(chunks):
                    out.num_decodes += 1
                chunks.append(ScheduledChunk(seq, start, 1, True))
                out.num_batched_tokens += 1
                seq.num_computed_tokens = num_tokens
                seq.num_pending_tokens += 1
                seq.num_tokens = num_tokens + 1
                continue
            num_new = min(num_tokens - start, budget - out.num_batched_tokens)
            needs_encoder = self._chunk_needs_encoder(seq, start, num_new)
            if needs_encoder and not self._encoder_fits(seq, out):
                # the audio waits for a later step; the text before it can go now
                num_new = seq.audio.start - start
                needs_encoder = False
                if num_new <= 0:
                    continue
            while not self.block_manager.allocate(seq, num_new):
                victim = queue.pop()
                self.running.remove(victim)
                self._preempt(victim, out)
                if victim is seq:
                    return
            self._add_chunk(seq, start, num_new, needs_encoder, out)

    def _schedule_waiting(self, out: SchedulerOutput) -> None:
        cfg = self.config
        while self.waiting and out.num_batched_tokens < cfg.max_num_batched_tokens \
                and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            assert not seq.num_pending_tokens, "a preempted sequence waits until its pending token is known"
            start = self.block_manager.match_prefix(seq)
            num_new = seq.num_tokens - start
            token_budget = cfg.max_num_batched_tokens - out.num_batched_tokens
            if num_new > token_budget:
                # without chunked prefill only a recompute that fits no step at all is split
                if not cfg.enable_chunked_prefill and num_new <= cfg.max_num_batched_tokens:
                    break
                num_new = token_budget
            needs_encoder = self._chunk_needs_encoder(seq, start, num_new)
            if needs_encoder and not self._encoder_fits(seq, out):
                break
            if not self.block_manager.allocate(seq, num_new):
                break
            assert seq.num_computed_tokens == start
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.admitted.append(seq)
            self._add_chunk(seq, start, num_new, needs_encoder, out)

    @staticmethod
    def _chunk_needs_encoder(seq: Sequence, start: int, num_tokens: int) -> bool:
        return not seq.encoded and start < seq.audio.end and start + num_tokens > seq.audio.start

    def _encoder_fits(self, seq: Sequence, out: SchedulerOutput) -> bool:
        # the first audio of a step always fits, so an audio larger than the budget still runs, alone
        num_encoder_tokens = out.num_encoder_tokens + seq.audio.length
        return not out.to_encode or num_encoder_tokens <= self.config.max_num_encoder_tokens

    @staticmethod
    def _add_chunk(seq: Sequence, start: int, num_tokens: int, needs_encoder: bool, out: SchedulerOutput):
        samples = start + num_tokens == seq.num_tokens
        if num_tokens == 1 and samples and start >= seq.audio.end and out.num_decodes == len(out.chunks):
            out.num_decodes += 1
        out.chunks.append(ScheduledChunk(seq, start, num_tokens, samples))
        out.num_batched_tokens += num_tokens
        seq.num_computed_tokens = start + num_tokens  # counted as computed at once (see schedule)
        if samples:
            seq.num_pending_tokens += 1
            seq.num_tokens += 1
        if needs_encoder:
            seq.encoded = True
            out.to_encode.append(seq)
            out.num_encoder_tokens += seq.audio.length

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        self._release_encoder_output(seq, out.free_encoder)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    @staticmethod
    def _release_encoder_output(seq: Sequence, free_encoder: list[int]) -> None:
        if seq.encoded:
            seq.encoded = False
            free_encoder.append(seq.seq_id)

    def update(self, output: SchedulerOutput, sampled: dict[int, int]) -> list[Sequence]:
        """Takes the sampled tokens of a step scheduled earlier (later steps may already be scheduled)."""
        finished = []
        caching, block_size = self.block_manager.enable_prefix_caching, self.block_manager.block_size
        for chunk in output.chunks:
            seq = chunk.seq
            if seq.status is SequenceStatus.FINISHED:
                continue  # aborted, or stopped by an earlier step while this one was in flight
            if chunk.samples:
                token_id = sampled[seq.seq_id]
                seq.num_pending_tokens -= 1  # the pending token is known: num_tokens, which counts it, stays
                seq.output_token_ids.append(token_id)
                if token_id in seq.stop_token_ids:
                    seq.finish_reason = "stop"
                elif seq.num_tokens - seq.num_pending_tokens >= seq.max_num_tokens:
                    seq.finish_reason = "length"
            if seq.encoded and not seq.needs_audio:
                self._release_encoder_output(seq, self.encoder_outputs_to_free)
            if caching and seq.num_computed_tokens // block_size > len(seq.block_hashes):
                self.block_manager.cache_blocks(seq)  # a block filled up
            if seq.finish_reason is not None:
                if seq.status == SequenceStatus.WAITING:
                    self.waiting.remove(seq)  # preempted by a later schedule() before its last token came back
                seq.status = SequenceStatus.FINISHED
                self.block_manager.free(seq)
                finished.append(seq)
        if finished:
            self.running = [seq for seq in self.running if not seq.is_finished]
        return finished
