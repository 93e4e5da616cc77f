from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    """A word the forced aligner timed: seconds from the start of the request's audio, and the punctuation the
    transcript has right after the word (DashScope reports it apart; `word` has none)."""

    word: str
    start: float
    end: float
    punctuation: str = ""


@dataclass(slots=True)
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)  # the timed words of a sentence-sized cue


@dataclass(slots=True)
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0
    aligned_seconds: float = 0.0  # audio the forced aligner timed words in
    alignment_time: float | None = None  # seconds from the transcript's end to its words' times


@dataclass(slots=True)
class Transcription:
    text: str
    language: str | None
    token_ids: list[int]  # generated ids of all pieces in order, prompt excluded
    duration: float  # seconds of audio
    segments: list[Segment]  # one per audio piece; sentence-sized cues when the words were timed
    finish_reason: str  # "stop" | "length" | "abort"
    request_id: str = ""
    words: list[Word] | None = None  # when asked for (word_timestamps), from the forced aligner
    metrics: RequestMetrics | None = field(default=None, repr=False)


@dataclass(slots=True)
class RequestOutput:
    """What one engine step produced for one request: a text delta, and the result once finished."""

    request_id: str
    delta: str
    finished: bool
    result: Transcription | None = None
