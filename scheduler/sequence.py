import time
from dataclasses import dataclass, field
from enum import Enum, auto
from itertools import count

from qasr.scheduler.sampling_params import SamplingParams

_seq_ids = count()
PENDING_TOKEN = -1  # a sampled token still on the device; the runner feeds it from there


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(frozen=True, slots=True)
class AudioSpan:
    start: int
    length: int
    content_hash: bytes
    end: int = field(init=False, repr=False)  # start + length, a plain attribute: the scheduler reads it per step

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", self.start + self.length)


class Sequence:

    def __init__(
        self,
        prompt_token_ids: list[int],
        audio: AudioSpan,
        sampling_params: SamplingParams,
        stop_token_ids: frozenset[int],
        request_id: str = "",
        arrival_time: float | None = None,
    ):
        if not prompt_token_ids:
            raise ValueError("prompt_token_ids is empty")
        if audio.start < 0 or audio.length < 1 or audio.end > len(prompt_token_ids):
            raise ValueError(
                f"audio span [{audio.start}, {audio.end}) must be non-empty and lie inside "
                f"the prompt of {len(prompt_token_ids)} tokens"
            )
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = SequenceStatus.WAITING
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.audio = audio
        self.sampling_params = sampling_params
        self.stop_token_ids = frozenset() if sampling_params.ignore_eos else frozenset(stop_token_ids)
        self.num_computed_tokens = 0  # includes the tokens of steps launched but not yet finished
        self.num_pending_tokens = 0  # sampled by launched steps, not yet known on the host (at most 2)
        # prompt + output + pending tokens (the scheduler counts a token in as it becomes pending; it stays counted
        # as it becomes known), and the count at which max_tokens stops the sequence: plain attributes, as the
        # scheduler reads them for every sequence every step
        self.num_tokens = len(self.prompt_token_ids)
        self.max_num_tokens = self.num_tokens + sampling_params.max_tokens
        self.num_cached_tokens = 0
        self.block_ids: list[int] = []
        # chain hashes of the leading blocks in block_ids that the block manager has looked up or registered
        self.block_hashes: list[bytes] = []
        self.encoded = False
        self.finish_reason: str | None = None
        self.num_preemptions = 0

    def __repr__(self) -> str:
        return (
            f"Sequence(seq_id={self.seq_id}, status={self.status.name}, tokens={self.num_prompt_tokens}"
            f"+{self.num_output_tokens}, computed={self.num_computed_tokens})"
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def awaits_last_token(self) -> bool:
        """Its final token (by max_tokens) is sampled but not yet known: nothing is left to schedule."""
        return self.num_pending_tokens > 0 and self.num_tokens >= self.max_num_tokens

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def needs_audio(self) -> bool:
        return self.num_computed_tokens < self.audio.end

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        """Token ids of positions [start, end); a pending position reads PENDING_TOKEN."""
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        known = self.output_token_ids[max(start - n, 0):end - n]
        head = self.prompt_token_ids[start:] if start < n else []
        return head + known + [PENDING_TOKEN] * (end - start - len(head) - len(known))

    def token_id_at(self, position: int) -> int:
        """The token id at `position` (PENDING_TOKEN while it is on the device): token_ids_slice for one position."""
        num_prompt = len(self.prompt_token_ids)
        if position < num_prompt:
            return self.prompt_token_ids[position]
        index = position - num_prompt
        return self.output_token_ids[index] if index < len(self.output_token_ids) else PENDING_TOKEN

    def append_token(self, token_id: int) -> None:
        """A token known at once, that no step left pending."""
        self.output_token_ids.append(token_id)
        self.num_tokens += 1
