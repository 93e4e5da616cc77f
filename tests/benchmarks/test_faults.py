"""`qasr bench faults`, small, as the fault test of the deployment: two `qasr serve` replicas sharing a throwaway
PostgreSQL behind Debian's nginx running the repository's deploy/nginx/qasr.conf, with API keys; one replica
SIGKILLed under load, then (restarted) another SIGTERMed under load while a slow upload holds its drain open. The
run names every broken promise as a violation (a hang, a request after the kill that failed, an in-flight request
the drain let fail, a request sent during the drain that failed, a /health that never said 503, a task lost or run
into two, a transcript that changed); here there must be none."""

import argparse
import json
from pathlib import Path

from qasr.benchmarks import faults as bench


def replica_logs(folder: Path) -> str:
    """The end of each replica's log (a stuck one's ends with its threads' stacks), for a failure's message."""
    return "".join(f"\n--- {log.name}\n{log.read_text(errors='replace')[-6000:]}"
                   for log in sorted(folder.glob("faults-replica-*.log")))


def test_a_killed_and_a_drained_replica_lose_no_task_and_fail_only_what_was_on_the_dead_one(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--clients", "6", "--phase-s", "3", "--drain-hold-s", "8", "--timeout-s", "60",
                              "--out-dir", str(tmp_path)])
    status = bench.main(args)
    [path] = tmp_path.glob("faults-*.json")
    document = json.loads(path.read_text())
    violations = document["config"]["violations"]
    assert violations == [] and status == 0, "\n".join(violations) + replica_logs(tmp_path)
    assert all(document["config"]["checks"].values()) and len(document["config"]["checks"]) == 2
    rows = {row["phase"]: row for row in document["results"]}
    assert list(rows) == ["check", "kill", "drain", "tasks"]
    assert rows["kill"]["faults"] == rows["drain"]["faults"] == 1
    assert all(row["hangs"] == row["wrong_text"] == row["tasks_lost"] == row["failed_after_retries"] == 0
               for row in rows.values())
    # the kill hit transcriptions in flight, and nginx sent them to the survivor (a task submit in flight there
    # would get a 502, which its client sends again: it may have stored a task)
    assert rows["kill"]["resent"] > 0
    # the slow upload (8 s, begun just before SIGTERM) held the drain open, and requests sent meanwhile reached the
    # draining replica (nginx went around it, or a client got its 503 and sent the request again) and then succeeded
    assert document["config"]["drain_s"] > 6
    assert rows["drain"]["resent"] + rows["drain"]["status_503"] > 0
    assert rows["tasks"]["tasks_submitted"] > 0 and rows["kill"]["tasks_submitted"] > 0
    logs = list(tmp_path.glob("faults-replica-*.log"))
    assert len(logs) == 3  # two replicas, and the killed one's restart
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Error handling request" not in text, log.name
