import hashlib
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.audio_encoder import num_audio_tokens
from engine.checkpoint import load_weights, resolve_model_path
from engine.config import EngineConfig
from engine.demo import demo_model_path
from engine.features import FeatureConfig, LogMelExtractor
from engine.languages import resolve_language
from engine.model import Qwen3ASRModel
from engine.model_config import ModelConfig, load_model_config
from engine.model_runner import ModelRunner, PendingTokens
from engine.outputs import RequestMetrics, RequestOutput, Segment, Transcription
from engine.prompt import PromptBuilder
from engine.splitting import AudioPiece, split_audio
from engine.tokenizer import load_tokenizer, special_tokens
from engine.transcript import (
    IncrementalDetokenizer,
    TranscriptStream,
    join_texts,
    merge_languages,
    parse_transcript,
    piece_separator,
)
from kernels import get_attention_backend
from scheduler import AudioSpan, SamplingParams, Scheduler, SchedulerConfig, SchedulerOutput, Sequence


@dataclass(slots=True)
class PieceState:
    seq: Sequence
    piece: AudioPiece
    detokenizer: IncrementalDetokenizer
    stream: TranscriptStream
    held_deltas: list[str] = field(default_factory=list)
    is_first_delta: bool = True


@dataclass(slots=True)
class GraphMemory:
    """Device memory of the decode graphs: measured before sizing the KV pool, and when captured for real."""

    profiled_bytes: int = 0
    captured_bytes: int = 0


@dataclass(slots=True)
class RequestState:
    request_id: str
    pieces: list[PieceState]
    language: str | None
    duration: float
    metrics: RequestMetrics
    next_piece_to_stream: int = 0
    streamed_tail: str = ""


MAX_GRAPH_BATCH_SIZE = 512


class LLMEngine:
    """The synchronous engine: requests in, one scheduled step at a time, text deltas and results out."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # Triton launches on the current device
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_path = resolve_model_path(config.model) if config.model else demo_model_path()
        self.model_config = load_model_config(self.model_path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.special = special_tokens(self.tokenizer, self.model_config)
        self.prompts = PromptBuilder(self.tokenizer, self.special)
        self.features = LogMelExtractor(FeatureConfig.from_checkpoint(self.model_path), self.device)
        max_positions = self.model_config.text.max_position_embeddings
        self.max_model_len = config.max_model_len or max_positions
        if self.max_model_len > max_positions:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's {max_positions} positions")
        model = build_model(self.model_config, self.device, self.dtype)
        model.load_weights(load_weights(self.model_path, self.model_config, self.dtype))
        model.eval()
        self.runner = ModelRunner(model, self.features, get_attention_backend(config.attention_backend, self.device),
                                  config.block_size, config.kv_cache_dtype, seed=config.seed)
        self.graph_memory = GraphMemory()
        num_blocks = self._num_kv_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        if self.device.type == "cuda" and self.runner.backend.name == "triton":
            self.runner.warm_up()
        if self.uses_cuda_graphs:
            self.graph_memory.captured_bytes = self.runner.capture_decode_graphs(self.max_graph_batch_size,
                                                                                 self.max_model_len)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_encoder_tokens=config.max_num_encoder_tokens or config.max_num_batched_tokens,
            num_blocks=num_blocks,
            block_size=config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            enable_chunked_prefill=config.enable_chunked_prefill,
            max_model_len=self.max_model_len,
        ))
        self.requests: dict[str, RequestState] = {}
        self.piece_of_seq: dict[int, tuple[RequestState, PieceState]] = {}
        self.waveforms: dict[int, np.ndarray] = {}
        self.in_flight: tuple[SchedulerOutput, PendingTokens] | None = None
        # unfinished requests that have had a step (a preempted one still counts); the rest are queued. A plain int
        # that the metrics read from another thread while the engine runs
        self.num_running_requests = 0
        self.request_ids = (f"req-{i}" for i in itertools.count())

    @property
    def max_graph_batch_size(self) -> int:
        return min(self.config.max_num_seqs, MAX_GRAPH_BATCH_SIZE)

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.device.type == "cuda" and not self.config.enforce_eager and self.runner.backend.name == "triton"

    def _num_kv_blocks(self) -> int:
        """Blocks that fit in what is left after the weights, the largest step's activations and the CUDA
        graphs (on CPU: a fixed budget), capped at what max_num_seqs full-length sequences could use."""
        config = self.config
        block_bytes = self.runner.kv_block_bytes()
        enough = config.max_num_seqs * -(-self.max_model_len // config.block_size)
        if config.num_kv_blocks:
            return config.num_kv_blocks
        if self.device.type == "cuda":
            piece_tokens = num_audio_tokens(self.features.num_frames(
                int(config.max_piece_seconds * self.features.config.sample_rate)))
            encoder_tokens = max(config.max_num_encoder_tokens or config.max_num_batched_tokens, piece_tokens)
            activations = self.runner.profile_peak_activation_bytes(
                config.max_num_batched_tokens, encoder_tokens, config.max_num_seqs)
            if self.uses_cuda_graphs:
                self.graph_memory.profiled_bytes = self.runner.profile_decode_graph_bytes(
                    self.max_graph_batch_size, self.max_model_len)
            graphs = self.graph_memory.profiled_bytes
            free, total = torch.cuda.mem_get_info(self.device)
            budget = total * config.gpu_memory_utilization - (total - free) - activations - graphs
        else:
            budget = config.cpu_kv_cache_gib * (1 << 30)
        num_blocks = min(int(budget // block_bytes), enough)
        if num_blocks < 1:
            raise RuntimeError("no memory left for the KV cache; lower max_num_batched_tokens or raise "
                               "gpu_memory_utilization")
        return num_blocks

    def add_request(self, samples: np.ndarray, language: str | None = None, context: str = "",
                    sampling_params: SamplingParams | None = None, request_id: str | None = None,
                    arrival_time: float | None = None) -> str:
        """Queues one audio (float32 mono 16 kHz); long audio becomes several pieces decoded in parallel."""
        if len(samples) == 0:
            raise ValueError("audio is empty (0 samples)")
        request_id = request_id or next(self.request_ids)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        language = resolve_language(language)
        params = sampling_params or SamplingParams()
        stop_ids = frozenset() if params.ignore_eos else frozenset(self.special.eos)
        arrival = arrival_time if arrival_time is not None else time.monotonic()
        pieces, sequences = [], []
        for piece in split_audio(samples, self.config.max_piece_seconds, self.features.config.sample_rate):
            tokens = num_audio_tokens(self.features.num_frames(len(piece.samples)))
            prompt, audio_start = self.prompts.build(tokens, context, language)
            audio = AudioSpan(audio_start, tokens, hashlib.blake2b(piece.samples.tobytes(), digest_size=16).digest())
            seq = Sequence(prompt, audio, params, stop_ids, request_id=request_id, arrival_time=arrival)
            pieces.append(PieceState(seq, piece, IncrementalDetokenizer(self.tokenizer), TranscriptStream(language)))
            sequences.append(seq)
        added: list[Sequence] = []
        try:
            for seq in sequences:
                self.scheduler.add(seq)
                added.append(seq)
        except ValueError:
            for seq in added:
                self.scheduler.abort(seq.seq_id)
            raise
        state = RequestState(request_id, pieces, language, len(samples) / self.features.config.sample_rate,
                             RequestMetrics(arrival_time=arrival,
                                            num_prompt_tokens=sum(s.num_prompt_tokens for s in sequences)))
        self.requests[request_id] = state
        for piece_state in pieces:
            self.piece_of_seq[piece_state.seq.seq_id] = (state, piece_state)
            self.waveforms[piece_state.seq.seq_id] = piece_state.piece.samples
        return request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        state = self.requests.get(request_id)
        if state is None:
            return None
        for piece_state in state.pieces:
            if not piece_state.seq.is_finished:
                self.scheduler.abort(piece_state.seq.seq_id)
        return self._finish(state)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    @property
    def num_waiting_requests(self) -> int:
        return len(self.requests) - self.num_running_requests

    def step(self) -> list[RequestOutput]:
        """Schedules and launches step N while the device still runs step N-1, then takes N-1's tokens and
        turns them into text while the device runs N: the host work hides behind the device, and outputs
        trail the launches by one step."""
        step = self.scheduler.schedule()
        now = time.monotonic()
        for chunk in step.chunks:
            state, _ = self.piece_of_seq[chunk.seq.seq_id]
            if state.metrics.first_scheduled_time is None:
                state.metrics.first_scheduled_time = now
                self.num_running_requests += 1
        pending = self.runner.launch(step, self.waveforms)
        previous, self.in_flight = self.in_flight, (step, pending)
        if previous is None:
            return []
        previous_step, previous_pending = previous
        # a sequence that stopped before this step's results came back sampled once more: drop that token
        live = {c.seq.seq_id for c in previous_step.chunks if c.samples and not c.seq.is_finished}
        sampled = {seq_id: token for seq_id, token in previous_pending.result().items() if seq_id in live}
        return self._process(sampled, self.scheduler.update(previous_step, sampled))

    def _process(self, sampled: dict[int, int], finished: list[Sequence]) -> list[RequestOutput]:
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        for seq_id, token in sampled.items():
            if seq_id not in self.piece_of_seq:
                continue
            state, piece_state = self.piece_of_seq[seq_id]
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            delta = piece_state.stream.push(piece_state.detokenizer.push(token))
            if delta:
                piece_state.held_deltas.append(delta)
            touched[state.request_id] = state
        for seq in finished:
            if seq.seq_id not in self.piece_of_seq:
                continue
            state, piece_state = self.piece_of_seq[seq.seq_id]
            tail = piece_state.stream.push(piece_state.detokenizer.finish()) + piece_state.stream.finish()
            if tail:
                piece_state.held_deltas.append(tail)
            self._forget(seq)
            touched[state.request_id] = state
        outputs = []
        for state in touched.values():
            delta = self._stream_in_order(state)
            if all(p.seq.is_finished for p in state.pieces):
                done = self._finish(state)
                done.delta = delta + done.delta
                outputs.append(done)
            elif delta:
                outputs.append(RequestOutput(state.request_id, delta, finished=False))
        return outputs

    def _stream_in_order(self, state: RequestState) -> str:
        """Deltas of piece k are released only once pieces before it have finished, so text stays in order."""
        out = []
        while state.next_piece_to_stream < len(state.pieces):
            piece_state = state.pieces[state.next_piece_to_stream]
            for delta in piece_state.held_deltas:
                if piece_state.is_first_delta:
                    out.append(piece_separator(state.streamed_tail, delta))
                    piece_state.is_first_delta = False
                out.append(delta)
                state.streamed_tail = delta
            piece_state.held_deltas.clear()
            if not piece_state.seq.is_finished:
                break
            state.next_piece_to_stream += 1
        return "".join(out)

    def _forget(self, seq: Sequence) -> None:
        self.waveforms.pop(seq.seq_id, None)
        self.runner.forget(seq.seq_id)

    def _finish(self, state: RequestState) -> RequestOutput:
        if self.requests.pop(state.request_id, None) is not None and state.metrics.first_scheduled_time is not None:
            self.num_running_requests -= 1
        texts, languages, token_ids, segments = [], [], [], []
        reasons = set()
        for piece_state in state.pieces:
            seq = piece_state.seq
            self.piece_of_seq.pop(seq.seq_id, None)
            self._forget(seq)
            raw = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True,
                                        clean_up_tokenization_spaces=False)
            language, text = parse_transcript(raw, state.language)
            texts.append(text)
            languages.append(language)
            token_ids += seq.output_token_ids
            piece = piece_state.piece
            segments.append(Segment(piece.start, min(piece.start + piece.duration, state.duration), text))
            reasons.add(seq.finish_reason or "abort")
            state.metrics.num_preemptions += seq.num_preemptions
        state.metrics.finished_time = time.monotonic()
        state.metrics.num_output_tokens = len(token_ids)
        reason = "abort" if "abort" in reasons else "length" if "length" in reasons else "stop"
        result = Transcription(text=join_texts(texts), language=merge_languages(languages), token_ids=token_ids,
                               duration=state.duration, segments=segments, finish_reason=reason,
                               request_id=state.request_id, metrics=state.metrics)
        return RequestOutput(state.request_id, "", finished=True, result=result)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None or "auto": bfloat16 on CUDA, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def build_model(config: ModelConfig, device: torch.device, dtype: torch.dtype) -> Qwen3ASRModel:
    """Parameters are created directly in the target dtype on the device; float32 buffers (RoPE, positions)
    stay float32 because they are built with explicit dtypes."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Qwen3ASRModel(config)
    finally:
        torch.set_default_dtype(previous)
