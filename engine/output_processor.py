"""From sampled tokens to what clients see: incremental detokenization, the transcript header parsed away, and a
long audio's pieces released in order and joined into one Transcription. A request that wants word timestamps
is held once its text is out, until the forced aligner has timed each piece's words."""

import time
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from qasr.engine.alignment import AlignmentProcessor, PieceAlignment
from qasr.engine.cues import sentence_cues
from qasr.engine.detokenizer import Detokenizer, detokenizer_factory
from qasr.engine.engine_core import EngineCoreOutputs
from qasr.engine.input_processor import ProcessedRequest
from qasr.engine.languages import Language, detected_language
from qasr.engine.outputs import RequestMetrics, RequestOutput, Segment, Transcription, Word
from qasr.engine.prompt import TranscriptStream
from qasr.engine.splitting import AudioPiece
from qasr.engine.words import WordSpan, can_align
from qasr.scheduler import AlignmentJob, Sequence


@dataclass(frozen=True, slots=True)
class CueLimits:
    max_seconds: float
    max_chars: int


@dataclass(slots=True)
class PieceState:
    seq: Sequence
    piece: AudioPiece
    detokenizer: Detokenizer
    stream: TranscriptStream
    text: str = ""  # this piece's transcript so far: every delta its stream gave
    alignment: PieceAlignment | None = None  # its words' job, while the aligner times them
    spans: list[WordSpan] = field(default_factory=list)  # where its words lie in its text
    words: list[Word] | None = None  # timed
    held_deltas: list[str] = field(default_factory=list)  # of those, the ones not yet released to the client
    is_first_delta: bool = True
    closed: bool = False  # no more tokens: the stream gave its last delta
    quiet: bool = False  # its text is made once, when it closes, from all its sequence's tokens
    tokens_in_text: int = 0  # how many of its sequence's output tokens have gone through the detokenizer

    def waits(self, stream_interval: int) -> bool:
        """Its new tokens wait for more (a quiet piece's for its end): fewer than stream_interval have come since
        its text was last made, and its first text is out."""
        if self.quiet:
            return True
        return (self.stream.started
                and len(self.seq.output_token_ids) - self.tokens_in_text < stream_interval)

    def new_raw_text(self) -> str:
        """Its output tokens that have not been through the detokenizer yet, through it."""
        tokens = self.seq.output_token_ids
        new = len(tokens) - self.tokens_in_text
        self.tokens_in_text = len(tokens)
        if new == 1:
            return self.detokenizer.push(tokens[-1])
        return self.detokenizer.push_many(tokens[-new:]) if new else ""

    def take_tokens(self) -> None:
        if len(self.seq.output_token_ids) > self.tokens_in_text:
            self.take(self.new_raw_text())

    def take(self, raw: str) -> None:
        delta = self.stream.push(raw)
        if delta:
            self.text += delta
            self.held_deltas.append(delta)

    def close(self) -> None:
        """The piece's last text: its tokens not yet taken, the detokenizer's held bytes and what the stream held
        back."""
        if not self.closed:
            self.take_tokens()
            self.take(self.detokenizer.finish())
            tail = self.stream.finish()
            if tail:
                self.text += tail
                self.held_deltas.append(tail)
            self.closed = True


@dataclass(slots=True)
class RequestState:
    request_id: str
    pieces: list[PieceState]
    language: Language | None  # forced; None: detected per piece
    duration: float  # seconds of audio
    metrics: RequestMetrics
    word_timestamps: bool = False
    next_piece_to_stream: int = 0
    text: str = ""  # everything released to the client so far, separators between pieces included
    alignment_started: float | None = None  # when its pieces' words went to the aligner

    @property
    def quiet(self) -> bool:
        """No deltas: the whole text once, when it finishes (TranscriptionRequest.stream False)."""
        return self.pieces[0].quiet


class OutputProcessor:
    """Owns the requests' text state; the engine core owns their sequences' compute."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, alignment: AlignmentProcessor | None = None,
                 cue_limits: CueLimits = CueLimits(7.0, 84), stream_interval: int = 1):
        self.new_detokenizer = detokenizer_factory(tokenizer)
        self.alignment = alignment
        self.cue_limits = cue_limits
        self.stream_interval = stream_interval
        self.requests: dict[str, RequestState] = {}
        self.piece_of_seq: dict[int, tuple[RequestState, PieceState]] = {}
        self.piece_of_job: dict[int, tuple[RequestState, PieceState]] = {}
        # the one piece of each request that has one, once its first token is in and until it finishes: its deltas
        # go straight out, into its own text; the request's text is brought level when it leaves (_stop_streaming)
        self.streaming: dict[int, tuple[RequestState, PieceState]] = {}
        self.new_jobs: list[tuple[AlignmentJob, np.ndarray]] = []
        # unfinished requests that have been scheduled (a preempted one still counts); the rest are queued. A plain
        # int that the metrics read from another thread while the engine runs
        self.num_running_requests = 0

    @property
    def num_waiting_requests(self) -> int:
        return len(self.requests) - self.num_running_requests

    def add(self, request: ProcessedRequest) -> None:
        pieces = [PieceState(seq, piece, self.new_detokenizer(), TranscriptStream(request.language),
                             quiet=not request.stream)
                  for seq, piece in zip(request.sequences, request.pieces)]
        metrics = RequestMetrics(arrival_time=request.arrival_time,
                                 num_prompt_tokens=sum(seq.num_prompt_tokens for seq in request.sequences))
        state = RequestState(request.request_id, pieces, request.language, request.duration, metrics,
                             request.word_timestamps)
        self.requests[request.request_id] = state
        for piece_state in pieces:
            self.piece_of_seq[piece_state.seq.seq_id] = (state, piece_state)

    def unfinished_seq_ids(self, request_id: str) -> list[int] | None:
        """The sequences an abort must stop; None for a request that is not (or no longer) here."""
        state = self.requests.get(request_id)
        if state is None:
            return None
        return [p.seq.seq_id for p in state.pieces if not p.seq.is_finished]

    def unfinished_job_ids(self, request_id: str) -> list[int]:
        state = self.requests.get(request_id)
        return [p.alignment.job.job_id for p in state.pieces if p.alignment] if state else []

    def take_alignment_jobs(self) -> list[tuple[AlignmentJob, np.ndarray]]:
        """The jobs made since the last call, each with its piece's samples, for the engine core."""
        jobs, self.new_jobs = self.new_jobs, []
        return jobs

    def process(self, outputs: EngineCoreOutputs) -> list[RequestOutput]:
        for seq in outputs.admitted:
            state, _ = self.piece_of_seq[seq.seq_id]
            if state.metrics.first_scheduled_time is None:
                state.metrics.first_scheduled_time = outputs.scheduled_time
                self.num_running_requests += 1
        for seq in outputs.finished:
            self._stop_streaming(seq.seq_id)
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        results = []
        streaming, interval = self.streaming, self.stream_interval
        for seq_id, token in outputs.sampled.items():
            streams = streaming.get(seq_id)
            if streams is not None:  # the common case, kept short: PieceState.take without holding the delta
                state, piece_state = streams
                if interval == 1:
                    raw = piece_state.detokenizer.push(token)
                    piece_state.tokens_in_text += 1
                elif piece_state.waits(interval):
                    continue
                else:
                    raw = piece_state.new_raw_text()
                if delta := piece_state.stream.push(raw):
                    piece_state.text += delta
                    results.append(RequestOutput(state.request_id, delta, False))  # positional: 40% cheaper
                continue
            state, piece_state = self.piece_of_seq[seq_id]
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            if piece_state.waits(interval):
                continue
            piece_state.take_tokens()
            touched[state.request_id] = state
        for seq in outputs.finished:
            state, piece_state = self.piece_of_seq[seq.seq_id]
            piece_state.close()
            touched[state.request_id] = state
        for job_id, classes in outputs.aligned.items():
            state, piece_state = self.piece_of_job.pop(job_id)
            assert self.alignment is not None and piece_state.alignment is not None
            piece_state.words = self.alignment.words(piece_state.alignment, classes)
            piece_state.alignment = None
            touched[state.request_id] = state
        for state in touched.values():
            if not all(p.seq.is_finished for p in state.pieces):
                if state.quiet:
                    continue
                if delta := self._stream_in_order(state):
                    results.append(RequestOutput(state.request_id, delta, finished=False))
                if len(state.pieces) == 1:
                    self.streaming[state.pieces[0].seq.seq_id] = state, state.pieces[0]
            elif state.word_timestamps and state.alignment_started is None and self._start_alignment(state):
                # the whole text is out; its words come later
                if not state.quiet and (delta := self._stream_in_order(state)):
                    results.append(RequestOutput(state.request_id, delta, finished=False))
            elif not any(p.alignment for p in state.pieces):
                results.append(self.finish(state.request_id))
        return results

    def _stop_streaming(self, seq_id: int) -> None:
        """The piece's deltas go through _stream_in_order again, from the text it has released on its own."""
        streams = self.streaming.pop(seq_id, None)
        if streams is not None:
            state, piece_state = streams
            state.text = piece_state.text  # the request's only piece: all it released, no separator before it
            piece_state.is_first_delta = not piece_state.text

    def _start_alignment(self, state: RequestState) -> bool:
        """Makes a job for each piece with words to time in a language the aligner knows; False if none has."""
        assert self.alignment is not None
        state.alignment_started = time.monotonic()
        for piece_state in state.pieces:
            language = state.language or detected_language(piece_state.stream.language)
            piece = piece_state.piece
            if not can_align(language):
                continue
            piece_state.alignment = self.alignment.job(piece_state.text, piece.samples, piece.start, language)
            if piece_state.alignment is None:
                piece_state.words = []
                continue
            piece_state.spans = piece_state.alignment.spans
            job = piece_state.alignment.job
            self.piece_of_job[job.job_id] = (state, piece_state)
            self.new_jobs.append((job, piece.samples))
            state.metrics.aligned_seconds += piece.duration
        return any(p.alignment for p in state.pieces)

    def _stream_in_order(self, state: RequestState) -> str:
        """Deltas of piece k are released only once pieces before it have finished, so text stays in order."""
        start = len(state.text)
        while state.next_piece_to_stream < len(state.pieces):
            piece_state = state.pieces[state.next_piece_to_stream]
            for delta in piece_state.held_deltas:
                if piece_state.is_first_delta:
                    state.text += piece_separator(state.text, delta)
                    piece_state.is_first_delta = False
                state.text += delta
            piece_state.held_deltas.clear()
            if not piece_state.closed:
                break
            state.next_piece_to_stream += 1
        return state.text[start:]

    def finish(self, request_id: str) -> RequestOutput:
        """The request's last delta and its Transcription (all pieces finished, or aborted); the request is
        forgotten. The transcript's text is exactly what was released as deltas."""
        for piece_state in self.requests[request_id].pieces:
            self._stop_streaming(piece_state.seq.seq_id)
        state = self.requests.pop(request_id)
        if state.metrics.first_scheduled_time is not None:
            self.num_running_requests -= 1
        for piece_state in state.pieces:
            piece_state.close()
            self.piece_of_seq.pop(piece_state.seq.seq_id, None)
        delta = self._stream_in_order(state)
        token_ids, segments, reasons = [], [], set()
        words: list[Word] | None = [] if state.word_timestamps else None
        for piece_state in state.pieces:
            seq, piece = piece_state.seq, piece_state.piece
            token_ids += seq.output_token_ids
            if piece_state.alignment is not None:  # aborted while the aligner had it
                self.piece_of_job.pop(piece_state.alignment.job.job_id, None)
                piece_state.alignment = None
            if piece_state.words and words is not None:
                words += piece_state.words
                segments += sentence_cues(piece_state.text, piece_state.spans, piece_state.words,
                                          self.cue_limits.max_seconds, self.cue_limits.max_chars)
            else:
                end = min(piece.start + piece.duration, state.duration)
                segments.append(Segment(piece.start, end, piece_state.text))
            reasons.add(seq.finish_reason or "abort")
            state.metrics.num_preemptions += seq.num_preemptions
        state.metrics.finished_time = time.monotonic()
        if state.alignment_started is not None:
            state.metrics.alignment_time = state.metrics.finished_time - state.alignment_started
        state.metrics.num_output_tokens = len(token_ids)
        reason = "abort" if "abort" in reasons else "length" if "length" in reasons else "stop"
        language = merge_languages([detected_language(p.stream.language) for p in state.pieces])
        result = Transcription(text=state.text, language=language, token_ids=token_ids, duration=state.duration,
                               segments=segments, finish_reason=reason, request_id=state.request_id,
                               metrics=state.metrics, words=words)
        return RequestOutput(state.request_id, delta, finished=True, result=result)


def merge_languages(languages: list[str | None]) -> str | None:
    """The pieces' languages in order, repeats dropped: "English", or "English,Chinese" for a mixed audio."""
    merged: list[str] = []
    for language in languages:
        if language and (not merged or merged[-1] != language):
            merged.append(language)
    return merged[0] if len(merged) == 1 else ",".join(merged) or None


def _is_unspaced_script(char: str) -> bool:
    """Scripts written without spaces between words: CJK, kana, Thai."""
    code = ord(char)
    return (0x2E80 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F
            or 0x0E00 <= code <= 0x0E7F or 0xFF00 <= code <= 0xFFEF)


def piece_separator(left: str, right: str) -> str:
    """What goes between the texts of two consecutive audio pieces: a space, unless either side is
    empty, already spaced, or written in an unspaced script."""
    if not left or not right or left[-1].isspace() or right[0].isspace():
        return ""
    if _is_unspaced_script(left[-1]) or _is_unspaced_script(right[0]):
        return ""
    return " "
