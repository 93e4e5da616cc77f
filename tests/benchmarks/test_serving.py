"""`qasr bench serve --launch` end to end on the CPU: the bundled demo model served on loopback, held-out clips."""

import json
from pathlib import Path

from qasr.cli import main

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def test_serving_benchmark_launches_a_server_and_writes_the_standard_json(tmp_path: Path, capsys) -> None:
    code = main(["bench", "serve", "--num-requests", "6", "--concurrency", "1", "3", "--stream", "--out-dir",
                 str(tmp_path), "--launch", "--max-num-seqs", "4"])
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
        assert row["wer"] < 0.2  # the demo model gets about 3% on these clips; garbage text gets near 100%
        assert row["server_generation_tokens"] > 0 and row["server_prompt_tokens"] > 0
