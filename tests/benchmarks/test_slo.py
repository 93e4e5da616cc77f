"""SLOs and gates of `qasr bench serve`: parsing, which requests meet the objectives, and gates that pass and fail
as they should."""

import pytest

from qasr.benchmarks.slo import check_gates, meets, parse_gate, parse_slo


def test_slos_parse_and_judge_each_request() -> None:
    slos = dict(parse_slo(text) for text in ("ttft=0.5", "latency=3", "rtf=0.2"))
    assert slos == {"ttft": 0.5, "latency": 3.0, "rtf": 0.2}
    assert meets(slos, latency=1.0, ttft=0.4, audio_seconds=10)
    assert not meets(slos, latency=1.0, ttft=0.6, audio_seconds=10)  # first text too late
    assert not meets(slos, latency=2.5, ttft=0.1, audio_seconds=10)  # rtf 0.25
    assert not meets(slos, latency=3.5, ttft=0.1, audio_seconds=100)
    assert not meets({"ttft": 0.5}, latency=0.8, ttft=None, audio_seconds=10)  # not streamed: ttft is the latency
    for bad in ("ttfb=1", "ttft", "ttft=soon", "latency=0", "rtf=-1"):
        with pytest.raises(ValueError, match="--slo"):
            parse_slo(bad)


def test_gates_pass_and_fail_as_they_should() -> None:
    rows = [{"server": "qasr", "concurrency": 1, "wer": 0.02, "rtfx": 90.0, "p99_latency_s": 1.5},
            {"server": "qasr", "concurrency": 64, "wer": 0.02, "rtfx": 400.0, "p99_latency_s": 2.5}]
    gates = [parse_gate(text) for text in ("wer<=0.03", "rtfx >= 80", "p99_latency<2", "rtfx>100")]
    outcomes = check_gates(gates, rows)
    assert [(o["gate"], o["concurrency"], o["passed"]) for o in outcomes] == [
        ("wer<=0.03", 1, True), ("wer<=0.03", 64, True), ("rtfx >= 80", 1, True), ("rtfx >= 80", 64, True),
        ("p99_latency<2", 1, True), ("p99_latency<2", 64, False), ("rtfx>100", 1, False), ("rtfx>100", 64, True)]
    assert outcomes[5]["measure"] == "p99_latency_s" and outcomes[5]["value"] == 2.5
    assert not parse_gate("wer<=0.03").passes(None)  # no value (nothing completed) is a failure
    with pytest.raises(ValueError, match="no measure 'speed'"):
        check_gates([parse_gate("speed>=1")], rows)
    for bad in ("wer=0.03", "wer<=", "<=1", "wer<=0.03x"):
        with pytest.raises(ValueError, match="--gate"):
            parse_gate(bad)
