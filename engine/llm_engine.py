from pathlib import Path

import torch

from qasr.engine.alignment import AlignmentProcessor
from qasr.engine.checkpoint import resolve_model_path
from qasr.engine.config import EngineConfig
from qasr.engine.demo import demo_aligner_path, demo_model_path
from qasr.engine.engine_core import AlignerCheckpoint, EngineCore
from qasr.engine.features import FeatureConfig
from qasr.engine.host_memory import keep_freed_memory_for_reuse
from qasr.engine.input_processor import InputProcessor
from qasr.engine.model_config import load_model_config
from qasr.engine.output_processor import CueLimits, OutputProcessor
from qasr.engine.outputs import RequestOutput
from qasr.engine.request import InvalidRequest, TranscriptionRequest
from qasr.engine.tokenizer import load_tokenizer, special_tokens
from qasr.engine.words import check_alignable


class LLMEngine:
    """The synchronous engine, in three pieces as vLLM V1 has them: the input processor turns a request into
    sequences, the engine core runs them a step at a time, the output processor turns their tokens into text.
    A request that wants word timestamps goes round once more: its finished pieces' transcripts become alignment
    jobs for the core's forced aligner, whose time slots the output processor turns into words."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_path = resolve_model_path(config.model) if config.model else demo_model_path()
        self.model_config = load_model_config(self.model_path)
        max_positions = self.model_config.text.max_position_embeddings
        self.max_model_len = config.max_model_len or max_positions
        if self.max_model_len > max_positions:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's {max_positions} positions")
        tokenizer = load_tokenizer(self.model_path)
        features = FeatureConfig.from_checkpoint(self.model_path)
        self.input_processor = InputProcessor(tokenizer, special_tokens(tokenizer, self.model_config), features,
                                              config.max_piece_seconds, self.max_model_len,
                                              hash_audio=config.enable_prefix_caching)
        aligner, self.alignment_processor = None, None
        self.aligner_path = aligner_path = aligner_model_path(config)
        if aligner_path is not None:
            aligner = AlignerCheckpoint(aligner_path, load_model_config(aligner_path, aligner=True),
                                        FeatureConfig.from_checkpoint(aligner_path))
            self.alignment_processor = AlignmentProcessor(load_tokenizer(aligner_path), aligner.config,
                                                          aligner.features)
        self.core = EngineCore(config, self.model_path, self.model_config, features, self.max_model_len,
                               self.input_processor.longest_prompt_tokens(), aligner)
        self.output_processor = OutputProcessor(tokenizer, self.alignment_processor,
                                                CueLimits(config.max_cue_seconds, config.max_cue_chars),
                                                config.stream_interval)
        if self.core.device.type == "cpu":
            if config.cpu_threads is not None:
                torch.set_num_threads(config.cpu_threads)  # for the thread building the engine, which runs it
            if config.cpu_heap_reuse:
                keep_freed_memory_for_reuse()
        self.num_threads = torch.get_num_threads()

    @property
    def has_aligner(self) -> bool:
        return self.alignment_processor is not None

    def add_request(self, request: TranscriptionRequest) -> str:
        """Queues one audio; long audio becomes several pieces decoded in parallel. Returns the request id."""
        if request.word_timestamps:
            if not self.has_aligner:
                raise InvalidRequest("word timestamps need a forced aligner (aligner_model); none is loaded",
                                     field="word_timestamps")
            check_alignable(request.language)
        processed = self.input_processor.process(request)
        if processed.request_id in self.output_processor.requests:
            raise ValueError(f"request id {processed.request_id!r} is already in use")
        self.core.add(processed.sequences, [piece.samples for piece in processed.pieces])
        self.output_processor.add(processed)
        return processed.request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stops a request; returns its final output (what it had transcribed), or None if it was not running."""
        seq_ids = self.output_processor.unfinished_seq_ids(request_id)
        if seq_ids is None:
            return None
        self.core.abort(seq_ids)
        self.core.abort_alignments(self.output_processor.unfinished_job_ids(request_id))
        return self.output_processor.finish(request_id)

    def step(self) -> list[RequestOutput]:
        outputs = self.output_processor.process(self.core.step())
        # transcripts that finished in this step and want their words timed: the aligner's jobs for later steps
        jobs = self.output_processor.take_alignment_jobs()
        if jobs:
            self.core.add_alignments(jobs)
        return outputs

    @property
    def has_unfinished(self) -> bool:
        return bool(self.output_processor.requests)

    @property
    def num_running_requests(self) -> int:
        """Unfinished requests that have been scheduled (a preempted one still counts)."""
        return self.output_processor.num_running_requests

    @property
    def num_waiting_requests(self) -> int:
        return self.output_processor.num_waiting_requests


NO_ALIGNER = "none"


def aligner_model_path(config: EngineConfig) -> Path | None:
    """The forced aligner to load: the one named, none for "none", and by default the bundled demo aligner beside
    the bundled demo model (a real model gets none unless one is named: the demo aligner knows only the demo's
    domain)."""
    if config.aligner_model == NO_ALIGNER:
        return None
    if config.aligner_model:
        return resolve_model_path(config.aligner_model)
    return demo_aligner_path() if config.model is None else None
