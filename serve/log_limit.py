"""A flood of one warning cannot fill the disk: the same message (or Python warning) is logged at most once per
interval."""

import logging
import time

MAX_REMEMBERED = 1024


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per `interval_s` for each (logger, level, message template); the next
    one let through says how many were dropped. Records below WARNING (the access log) all pass."""

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self.seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (last let through, dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, template(record))
        now = time.monotonic()
        last, dropped = self.seen.get(key, (None, 0))
        if last is not None and now - last < self.interval_s:
            self.seen[key] = (last, dropped + 1)
            return False
        if len(self.seen) >= MAX_REMEMBERED:  # messages formatted before logging are all different keys
            self.seen.clear()
        self.seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} [{dropped} more like this in the last {now - last:.0f} s not logged]"
        return True


def template(record: logging.LogRecord) -> str:
    """What the repeats of one message share: its template; for a Python warning (logging.captureWarnings), whose
    text may hold what a client sent (aiohttp's warnings about a malformed form part do), where it was raised and
    its category."""
    if record.name == "py.warnings":  # "path:line: Category: message\n  source line\n"
        return ": ".join(str(record.msg).split(": ", 2)[:2])
    return str(record.msg)


def limit_repeats(interval_s: float = 10.0) -> None:
    """Sends Python warnings to the log, and installs a RepeatFilter on every handler of the root logger."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter(interval_s))
