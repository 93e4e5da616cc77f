"""Forced-alignment jobs waiting for the aligner: one forward pass each, no decoding, no cache kept.

Each engine step takes the oldest jobs whose tokens fit the step's budget (the oldest always, however long) and the
runner aligns them together in one batched pass beside the step's transcription work.
"""

from collections import deque
from dataclasses import dataclass, field
from itertools import count

from qasr.scheduler.sequence import AudioSpan

_job_ids = count()


@dataclass(slots=True)
class AlignmentJob:
    """One audio piece and its transcript's words, as the aligner's prompt: the audio placeholders, then each
    word followed by two `<timestamp>` tokens (its start and end slots)."""

    prompt_token_ids: list[int]
    audio: AudioSpan
    job_id: int = field(default_factory=lambda: next(_job_ids))

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids)


class AlignmentQueue:

    def __init__(self, max_num_batched_tokens: int):
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[AlignmentJob] = deque()
        self.aborted: set[int] = set()

    def __len__(self) -> int:
        return len(self.waiting) - len(self.aborted)

    def add(self, job: AlignmentJob) -> None:
        self.waiting.append(job)

    def abort(self, job_id: int) -> None:
        if any(job.job_id == job_id for job in self.waiting):
            self.aborted.add(job_id)

    def take(self) -> list[AlignmentJob]:
        """The oldest jobs that fit one step's token budget together; at least one while any waits."""
        taken: list[AlignmentJob] = []
        tokens = 0
        while self.waiting:
            job = self.waiting[0]
            if job.job_id in self.aborted:
                self.aborted.discard(self.waiting.popleft().job_id)
                continue
            if taken and tokens + job.num_tokens > self.max_num_batched_tokens:
                break
            taken.append(self.waiting.popleft())
            tokens += job.num_tokens
        return taken
