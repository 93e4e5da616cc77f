"""What the server holds at once besides requests: seconds of decoded audio, and bytes of downloads. A tiny upload
can decode to hours of audio; counting requests alone does not bound the memory they take."""

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator


class AudioBudgetExceeded(Exception):
    """Decoding this audio would take the server past its seconds of audio in flight."""


class AudioBudget:
    """Seconds of 16 kHz audio decoded and not yet transcribed, server-wide. Decoding runs on the audio pool's
    threads, which claim as they go; the event loop gives back."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.used_s = 0.0
        self.lock = threading.Lock()

    @property
    def full(self) -> bool:
        return self.used_s >= self.limit_s

    def claim(self, refusable: bool) -> "AudioClaim":
        """A claim that grows as its audio decodes. A refusable one (a client that can retry) raises
        AudioBudgetExceeded rather than go past the limit; the other kind (an accepted task) is counted anyway."""
        return AudioClaim(self, refusable)


class AudioClaim:

    def __init__(self, budget: AudioBudget, refusable: bool):
        self.budget = budget
        self.refusable = refusable
        self.seconds = 0.0
        self.released = False

    def __call__(self, seconds: float) -> None:
        """load_audio's on_decoded."""
        with self.budget.lock:
            if self.released:  # its request ended (a client that hung up) while the decoding went on: stop it
                raise AudioBudgetExceeded("the audio's request has ended")
            if self.refusable and self.budget.used_s + seconds > self.budget.limit_s:
                raise AudioBudgetExceeded(f"the server holds {self.budget.used_s:.0f} s of audio in flight, "
                                          f"its limit is {self.budget.limit_s:g} s")
            self.budget.used_s += seconds
            self.seconds += seconds

    def release(self) -> None:
        with self.budget.lock:
            self.budget.used_s -= self.seconds
            self.seconds = 0.0
            self.released = True


class ByteBudget:
    """Bytes of downloads in flight. A download reserves its worst case before it starts, so downloads waiting
    for room hold nothing and cannot block each other for good, and gives back what it did not use. Giving back
    never awaits: a download cancelled at any point leaves no bytes behind."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.freed = asyncio.Event()  # set whenever bytes are given back

    @contextlib.asynccontextmanager
    async def reserve(self, num_bytes: int) -> AsyncIterator["ByteReservation"]:
        while self.used_bytes + num_bytes > self.limit_bytes:
            self.freed.clear()
            await self.freed.wait()
        self.used_bytes += num_bytes
        reservation = ByteReservation(self, num_bytes)
        try:
            yield reservation
        finally:
            reservation.shrink(0)


class ByteReservation:

    def __init__(self, budget: ByteBudget, num_bytes: int):
        self.budget = budget
        self.num_bytes = num_bytes

    def shrink(self, num_bytes: int) -> None:
        """Keeps only `num_bytes` of the reservation (what a finished download holds)."""
        self.budget.used_bytes -= self.num_bytes - num_bytes
        self.num_bytes = num_bytes
        self.budget.freed.set()
