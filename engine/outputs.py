from dataclasses import dataclass, field


@dataclass(slots=True)
class Segment:
    start: float
    end: float
    text: str


@dataclass(slots=True)
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0


@dataclass(slots=True)
class Transcription:
    text: str
    language: str | None
    token_ids: list[int]  # generated ids of all pieces in order, prompt excluded
    duration: float  # seconds of audio
    segments: list[Segment]
    finish_reason: str  # "stop" | "length" | "abort"
    request_id: str = ""
    metrics: RequestMetrics | None = field(default=None, repr=False)


@dataclass(slots=True)
class RequestOutput:
    """What one engine step produced for one request: a text delta, and the result once finished."""

    request_id: str
    delta: str
    finished: bool
    result: Transcription | None = None
