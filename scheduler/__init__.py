from scheduler.block_manager import BlockManager
from scheduler.sampling_params import SamplingParams
from scheduler.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from scheduler.sequence import PENDING_TOKEN, AudioSpan, Sequence, SequenceStatus

__all__ = [
    "PENDING_TOKEN",
    "AudioSpan",
    "BlockManager",
    "SamplingParams",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "Sequence",
    "SequenceStatus",
]
