"""`qasr bench serve --launch` end to end on the CPU: the bundled demo model served on loopback, held-out clips;
gates that pass and fail; qasr against the transformers baseline server in one run, with SLOs, the rate search and
the figure."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qasr.cli import main

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def test_serving_benchmark_launches_a_server_and_writes_the_standard_json(tmp_path: Path, capsys) -> None:
    code = main(["bench", "serve", "--num-requests", "6", "--concurrency", "1", "3", "--stream", "--out-dir",
                 str(tmp_path), "--gate", "wer<=0.5", "--gate", "completed>=6", "--launch", "--max-num-seqs", "4"])
    assert code == 0
    assert "mean_latency_s" in capsys.readouterr().out
    [path] = tmp_path.glob("serving-cpu-*.json")
    document = json.loads(path.read_text())
    assert set(document) == TOP_LEVEL_KEYS and document["benchmark"] == "serving"
    assert not document["device"].startswith("unknown")
    config = document["config"]
    assert config["model"] == "qasr-demo" and config["launched"]["max_num_seqs"] == 4 and config["stream"]
    assert [row["concurrency"] for row in document["results"]] == [1, 3]
    for row in document["results"]:
        assert row["completed"] == 6 and row["failed"] == 0
        assert row["wall_s"] > 0 and row["rtfx"] > 0 and row["requests_per_s"] > 0 and row["mean_rtf"] > 0
        latencies = [row["mean_latency_s"]] + [row[f"p{p}_latency_s"] for p in (50, 90, 95, 99)]
        ttfts = [row["mean_ttft_s"]] + [row[f"p{p}_ttft_s"] for p in (50, 90, 95, 99)]
        assert all(0 < t <= latency for t, latency in zip(ttfts, latencies))
        # a sample of the held-out set, clips of several sentences included (the demo model: 2% on single sentences,
        # 24% on those); garbage text gets near 100%
        assert row["wer"] < 0.5
        assert row["server_generation_tokens"] > 0 and row["server_prompt_tokens"] > 0
    gates = config["gates"]
    assert len(gates) == 4 and all(gate["passed"] for gate in gates)  # two gates, two rows


@pytest.fixture(scope="module")
def baseline_url(tmp_path_factory: pytest.TempPathFactory):
    """`qasr bench baseline-server` on a free port: the demo model in plain transformers."""
    temporary = tmp_path_factory.mktemp("baseline-tmp")
    process = subprocess.Popen([sys.executable, "-m", "qasr", "bench", "baseline-server", "--port", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TMPDIR": str(temporary)})
    deadline, log = time.monotonic() + 180, []
    while not (found := re.search(r"on (http://\S+)", log[-1] if log else "")):
        line = process.stderr.readline()
        assert line or process.poll() is None, "the baseline server stopped:\n" + "".join(log)
        assert time.monotonic() < deadline, "the baseline server did not start:\n" + "".join(log)
        log.append(line)
    # the demo model's transformers-layout copy is gone once loaded: a server per test run used to leave 15 MB
    assert not list(temporary.glob("qasr-baseline-hf-*"))
    yield found.group(1)
    process.terminate()
    process.wait(timeout=30)


def test_two_servers_side_by_side_with_slos_a_search_a_failing_gate_and_the_figure(
        tmp_path: Path, baseline_url: str, capsys) -> None:
    figure = tmp_path / "serve.png"
    code = main(["bench", "serve", "--base-url", baseline_url, "--label", "baseline", "--num-requests", "6",
                 "--concurrency", "1", "4",
                 "--stream", "--slo", "ttft=0.05", "--find-max-rate", "--search-start-rate", "8",
                 "--search-steps", "1", "--max-search-s", "20", "--gate", "wer<=0.5", "--gate", "rtfx>=1e6",
                 "--plot", str(figure), "--out-dir", str(tmp_path), "--launch", "--max-num-seqs", "4"])
    assert code == 1  # the impossible rtfx gate fails the run, and says so
    err = capsys.readouterr().err
    assert "gate failed: rtfx>=1e6" in err and "gate failed: wer" not in err
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.stat().st_size > 20_000
    [path] = tmp_path.glob("serving-*.json")
    document = json.loads(path.read_text())
    config, rows = document["config"], document["results"]
    assert [(s["label"], s["url"]) for s in config["servers"]][0] == ("baseline", baseline_url)
    assert [s["label"] for s in config["servers"]] == ["baseline", "qasr (launched)"]
    assert [(row["server"], row["concurrency"]) for row in rows] == [
        ("baseline", 1), ("qasr (launched)", 1), ("baseline", 4), ("qasr (launched)", 4)]  # level by level
    for row in rows:
        assert row["completed"] == 6 and row["wer"] < 0.5 and 0 <= row["goodput"] <= 1
    baseline = {row["concurrency"]: row for row in rows if row["server"] == "baseline"}
    for ratio in config["ratios"]:
        assert ratio["server"] == "qasr (launched)"
        qasr = next(r for r in rows if r["server"] == "qasr (launched)" and r["concurrency"] == ratio["concurrency"])
        assert ratio["rtfx_ratio"] == pytest.approx(qasr["rtfx"] / baseline[ratio["concurrency"]]["rtfx"])
    assert [found["server"] for found in config["max_rates"]] == ["baseline", "qasr (launched)"]
    assert all(found["probes"] and found["slos"] == {"ttft": 0.05} for found in config["max_rates"])
    gates = {(gate["gate"], gate["concurrency"]): gate["passed"] for gate in config["gates"]}
    assert gates == {("wer<=0.5", 1): True, ("wer<=0.5", 4): True, ("rtfx>=1e6", 1): False, ("rtfx>=1e6", 4): False}
