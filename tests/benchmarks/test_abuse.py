"""`qasr bench abuse` end to end on the CPU, small: a launched server survives every run without a 5xx or a hang."""

import argparse
import json
from pathlib import Path

from qasr.benchmarks import abuse as bench


def test_abuse_runs_leave_no_server_error_no_hang_and_an_idle_server(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--requests", "30", "--hangups", "8", "--slow-connections", "80", "--burst-factor", "3",
                              "--open-files", "256", "--timeout-s", "60", "--out-dir", str(tmp_path)])
    assert bench.main(args) == 0
    [path] = tmp_path.glob("abuse-cpu-*.json")
    document = json.loads(path.read_text())
    assert document["config"]["server_exit_code"] == 0
    rows = {row["run"]: row for row in document["results"]}
    assert list(rows) == list(bench.RUNS)
    for row in rows.values():
        assert row["status_5xx"] == row["hangs"] == row["failed"] == 0, row
        assert row["recovery_s"] < 30 and row["server_peak_rss_mb"] > 0, row
    assert rows["fuzz"]["status_4xx"] > 0 and rows["burst"]["status_429"] > 0  # refusals were really provoked
    assert rows["slow"]["status_2xx"] == 5  # every /health check answered while 80 connections were held
    amplification = rows["amplification"]
    assert amplification["status_429"] >= 6 and amplification["status_4xx"] == 3  # 1 Hz WAV, prompt, fields
    log = (tmp_path / "abuse-server.log").read_text()
    assert "Traceback" not in log and "Error handling request" not in log
