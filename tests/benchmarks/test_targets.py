"""`qasr bench targets` on the H200 run of 2026-12-04 (benchmarks/results): the verdicts the README reads off it."""

import json
import shutil
from pathlib import Path

from qasr.benchmarks import gpu_check
from qasr.benchmarks.targets import FULL_GRAPHS, targets
from qasr.cli import build_parser, main

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
H200 = "cuda-2026-12-04-h200"


def verdicts(rows: list[dict]) -> dict[tuple[str, str, str], tuple[float | None, str]]:
    return {(row["target"].split(",")[0], row["model"], row["graphs"]): (row["measured"], row["met"]) for row in rows}


def test_the_h200_runs_verdicts(tmp_path: Path) -> None:
    """Part 1's kernels (tuned tiles) and part 2's throughput as gpu-check leaves them in one folder; the 0.6B's
    second run stands in for part 3's full graphs (qasr alone: transformers' rate comes from part 2's rows)."""
    for name in (f"kernels-{H200}-tuned", f"throughput-{H200}-0.6b-defaults", f"throughput-{H200}-1.7b-defaults"):
        shutil.copy(RESULTS / f"{name}.json", tmp_path)
    (tmp_path / FULL_GRAPHS).mkdir()
    second = json.loads((RESULTS / f"throughput-{H200}-0.6b-tuned.json").read_text())
    for row in second["results"]:
        row.update(transformers_rtfx=None, speedup_single_pass=None, speedup_split=None)  # --no-transformers
    (tmp_path / FULL_GRAPHS / "throughput-cuda-2026-12-04-0.6b.json").write_text(json.dumps(second))

    assert main(["bench", "targets", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "targets.json").read_text())
    found = verdicts(rows)
    measured, met = found[("decode attention / copy bandwidth", "", "")]
    assert round(measured, 2) == 0.81 and met == "yes"  # README: 0.81-1.03 with the tuned tiles
    default, full = "decode (default)", "full"

    def rounded(target: str, model: str, graphs: str, digits: int = 0) -> tuple[float, str]:
        measured, met = found[(target, model, graphs)]
        return round(measured, digits), met

    # README, "GPU numbers": 8.0-13.1x and 7.3-9.6x transformers; split 2,706x and 2,596x; TTFT 21 and 35 ms
    assert rounded("qasr / transformers", "0.6b", default, 1) == (8.0, "yes")
    assert rounded("qasr / transformers", "1.7b", default, 1) == (7.3, "yes")
    assert rounded("120 s clips at concurrency 128", "0.6b", default) == (2706, "NO")
    assert rounded("120 s clips at concurrency 128", "1.7b", default) == (2596, "NO")
    assert rounded("time to first token", "0.6b", default, 3) == (0.021, "yes")
    assert rounded("time to first token", "1.7b", default, 3) == (0.035, "NO")
    # the stand-in for full graphs: its speedups over part 2's transformers (worst: split 120 s, 2,607 / 280.1), its
    # rates against part 2's
    assert rounded("qasr / transformers", "0.6b", full, 1) == (round(2607.5 / 280.1, 1), "yes")
    ratio, met = found[("rate against the default graphs", "0.6b", full)]
    assert round(ratio, 3) == round(2607.5 / 2705.7, 3) and met == "NO"
    assert ("rate against the default graphs", "0.6b", default) not in found


def test_what_is_missing_or_failed_says_so(tmp_path: Path) -> None:
    """Part 1 alone (no throughput yet), and a throughput row that ran out of memory."""
    assert [row["met"] for row in targets(tmp_path)] == ["no result"]
    document = json.loads((RESULTS / f"throughput-{H200}-1.7b-defaults.json").read_text())
    document["results"][2] = {"clip_s": 120.0, "clips": 128, "error": "out of memory: CUDA out of memory."}
    (tmp_path / "throughput-cuda-2026-12-04-1.7b.json").write_text(json.dumps(document))
    found = verdicts(targets(tmp_path))
    assert found[("120 s clips at concurrency 128", "1.7b", "decode (default)")] == (None, "no result")
    assert found[("120.0 s row: out of memory: CUDA out of memory.", "1.7b", "decode (default)")][1] == "no result"


def test_gpu_check_ends_each_part_with_the_targets(tmp_path: Path) -> None:
    command = gpu_check.targets_command(tmp_path)
    assert command[1:3] == ["-m", "qasr"]
    build_parser().parse_args(command[3:])  # exits on an unknown flag or value
