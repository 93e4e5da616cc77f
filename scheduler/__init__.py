from qasr.scheduler.alignment_queue import AlignmentJob, AlignmentQueue
from qasr.scheduler.block_manager import BlockManager
from qasr.scheduler.sampling_params import SamplingParams
from qasr.scheduler.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from qasr.scheduler.sequence import PENDING_TOKEN, AudioSpan, Sequence, SequenceStatus

__all__ = [
    "PENDING_TOKEN",
    "AlignmentJob",
    "AlignmentQueue",
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
