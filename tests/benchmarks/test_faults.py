"""`qasr bench faults`, small, as the fault test of the deployment: two `qasr serve` replicas sharing a throwaway
PostgreSQL behind Debian's nginx running the repository's deploy/nginx/qasr.conf, with API keys; one replica
SIGKILLed under load, then (restarted) another SIGTERMed under load. The run names every broken promise as a
violation (a hang, a request after the kill that failed, an in-flight request the drain let fail, a /health that
never said 503, a task lost or run into two, a transcript that changed); here there must be none."""

import argparse
import json
from pathlib import Path

from qasr.benchmarks import faults as bench


def test_a_killed_and_a_drained_replica_lose_no_task_and_fail_only_what_was_on_the_dead_one(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--clients", "6", "--phase-s", "3", "--timeout-s", "60", "--out-dir", str(tmp_path)])
    status = bench.main(args)
    [path] = tmp_path.glob("faults-*.json")
    document = json.loads(path.read_text())
    assert document["config"]["violations"] == [] and status == 0
    assert all(document["config"]["checks"].values()) and len(document["config"]["checks"]) == 2
    rows = {row["phase"]: row for row in document["results"]}
    assert list(rows) == ["check", "kill", "drain", "tasks"]
    assert rows["kill"]["faults"] == rows["drain"]["faults"] == 1
    assert all(row["hangs"] == row["wrong_text"] == row["tasks_lost"] == 0 for row in rows.values())
    # the faults hit requests in flight: some ended 502/503 on the dead replica; the drain let its own finish
    assert rows["kill"]["status_502"] + rows["kill"]["status_503"] > 0
    assert rows["drain"]["failed_after_retries"] == 0
    assert rows["tasks"]["tasks_submitted"] > 0 and rows["kill"]["tasks_submitted"] > 0
    logs = list(tmp_path.glob("faults-replica-*.log"))
    assert len(logs) == 3  # two replicas, and the killed one's restart
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Error handling request" not in text, log.name
