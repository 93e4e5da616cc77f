"""Service-level objectives and gates of the serving benchmark.

    --slo ttft=0.5 --slo latency=3 --slo rtf=0.2
        a request meets them when it succeeded and each measure is at most its bound (ttft of an answer that was
        not streamed is its latency: the first text came with the last); goodput is the share that meets them all
    --gate wer<=0.03 --gate rtfx>=80 --gate p99_latency<=2
        conditions on the measures of a result row (`p99_latency` is the row's `p99_latency_s`); a run with a failing
        gate exits non-zero, naming it
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

SLO_MEASURES = ("ttft", "latency", "rtf")
OPERATORS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "<": operator.lt,
                                                          ">": operator.gt}
GATE = re.compile(r"\s*([A-Za-z0-9_]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


def parse_slo(text: str) -> tuple[str, float]:
    """`ttft=0.5` -> ("ttft", 0.5); for argparse's `type=`."""
    name, _, value = text.partition("=")
    name = name.strip()
    if name not in SLO_MEASURES:
        raise ValueError(f"--slo {text!r}: the measure must be one of {', '.join(SLO_MEASURES)}")
    try:
        bound = float(value)
    except ValueError:
        raise ValueError(f"--slo {text!r}: the bound must be a number of seconds (rtf: a ratio)") from None
    if not bound > 0:
        raise ValueError(f"--slo {text!r}: the bound must be positive")
    return name, bound


def meets(slos: dict[str, float], latency: float, ttft: float | None, audio_seconds: float) -> bool:
    """Whether a successful request met every objective."""
    measures = {"latency": latency, "ttft": latency if ttft is None else ttft, "rtf": latency / audio_seconds}
    return all(measures[name] <= bound for name, bound in slos.items())


@dataclass(frozen=True)
class Gate:
    text: str  # as given, e.g. "p99_latency<=2"
    name: str
    op: str
    bound: float

    def key(self, measures: Collection[str]) -> str:
        """The row key the gate reads: its name, or its name with the `_s` of a time."""
        for key in (self.name, f"{self.name}_s"):
            if key in measures:
                return key
        raise ValueError(f"--gate {self.text!r}: no measure {self.name!r}; one of {', '.join(sorted(measures))}")

    def passes(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.bound)


def parse_gate(text: str) -> Gate:
    """`rtfx>=80` -> Gate; for argparse's `type=`."""
    match = GATE.fullmatch(text)
    if match is None:
        raise ValueError(f"--gate {text!r}: write it as MEASURE<=NUMBER (or >=, <, >), e.g. p99_latency<=2")
    return Gate(text.strip(), match.group(1), match.group(2), float(match.group(3)))


def check_gates(gates: Iterable[Gate], rows: list[dict]) -> list[dict]:
    """Every gate on every row: {gate, server, level, measure, value, passed}."""
    outcomes = []
    for gate in gates:
        for row in rows:
            key = gate.key(row)
            outcomes.append({"gate": gate.text, "server": row.get("server"), "concurrency": row.get("concurrency"),
                             "request_rate": row.get("request_rate"), "measure": key, "value": row[key],
                             "passed": gate.passes(row[key])})
    return outcomes
