"""`qasr bench targets DIR`: the speed targets of a GPU read off the results a `make gpu-check` run wrote to DIR (its
JSON, and full-graphs/ below it for part 3): each figure beside its target and whether it is met, the engine's
default graphs (decode steps only) and full graphs side by side, and full graphs' rate against the default's on the
same rows (make them the default where they win). gpu-check runs it on the GPU machine at the end of each part,
and it reads the files brought back here just as well. The table also goes to DIR/targets.json.

Targets (one H100/H200): decode attention at >= 0.8 of the measured copy bandwidth at batch >= 64 and context >= 1k
(bf16 cache); >= 5x transformers on every throughput row; 2-minute clips at concurrency 128, split: 0.6B >= 5,000x
real time, 1.7B >= 3,000x; time to first token <= 30 ms for a 10 s clip alone.
"""

import argparse
import json
from pathlib import Path

from qasr.benchmarks.report import print_table

COPY_FRACTION, DECODE_MIN_BATCH, DECODE_MIN_CONTEXT = 0.8, 64, 1024
SPEEDUP = 5.0
LONG_CLIP_S, SPLIT_RTFX = 120.0, {"0.6b": 5000.0, "1.7b": 3000.0}
TTFT_CLIP_S, TTFT_S = 10.0, 0.030
FULL_GRAPHS = "full-graphs"  # gpu_check.py's folder for part 3


def newest(folder: Path, benchmark: str) -> dict[str, dict]:
    """The newest `benchmark` document in `folder` for each preset (kernels: one, under "")."""
    found: dict[str, dict] = {}
    for path in sorted(folder.glob(f"{benchmark}-*.json")):
        document = json.loads(path.read_text())
        key = document.get("config", {}).get("preset", "")
        if key not in found or document["date"] > found[key]["date"]:
            found[key] = document
    return found


def row_for(document: dict, clip_s: float) -> dict | None:
    return next((row for row in document["results"] if row.get("clip_s") == clip_s), None)


def verdict(target: str, model: str, graphs: str, measured: float | None, goal: str, met: bool | None) -> dict:
    return {"target": target, "model": model, "graphs": graphs, "measured": measured, "goal": goal,
            "met": "no result" if measured is None else "yes" if met else "NO"}


def attention_rows(folder: Path) -> list[dict]:
    kernels = newest(folder, "kernels").get("")
    fractions = [row["copy_fraction"] for row in (kernels or {}).get("results", [])
                 if row.get("impl") == "triton" and row.get("mode") == "decode" and row.get("kv_dtype") == "bfloat16"
                 and row["batch"] >= DECODE_MIN_BATCH and row["context"] >= DECODE_MIN_CONTEXT]
    worst = min(fractions, default=None)
    return [verdict("decode attention / copy bandwidth, batch >= 64, context >= 1k, worst", "", "", worst,
                    f">= {COPY_FRACTION}", worst is not None and worst >= COPY_FRACTION)]


def throughput_rows(document: dict | None, baseline: dict | None, preset: str, graphs: str) -> list[dict]:
    """`baseline`: part 2's document of the preset, for transformers' rate (part 3 times qasr alone) and for the
    ratio to the default graphs; None for part 2's own rows."""
    if document is None:
        return [verdict("throughput", preset, graphs, None, "", None)]
    speedups, ratios, failed = [], [], []
    for row in document["results"]:
        reference = row_for(baseline, row["clip_s"]) if baseline else row
        if "error" in row:  # out of memory, say: the row shows nothing, and says so below
            failed.append(verdict(f"{row['clip_s']} s row: {row['error'][:60]}", preset, graphs, None, "", None))
            continue
        if reference is None:
            continue
        for run in ("single_pass", "split"):
            rtfx = row.get(f"qasr_{run}_rtfx")
            if rtfx is None:
                continue
            if reference.get("transformers_rtfx"):
                speedups.append(rtfx / reference["transformers_rtfx"])
            if baseline and reference.get(f"qasr_{run}_rtfx"):
                ratios.append(rtfx / reference[f"qasr_{run}_rtfx"])
    long, short = row_for(document, LONG_CLIP_S), row_for(document, TTFT_CLIP_S)
    split = long.get("qasr_split_rtfx") if long else None
    ttft = short.get("qasr_ttft_concurrency1_s") if short else None
    worst = min(speedups, default=None)
    goal = SPLIT_RTFX.get(preset)
    rows = [verdict("qasr / transformers, every row and run, worst", preset, graphs, worst, f">= {SPEEDUP:g}",
                    worst is not None and worst >= SPEEDUP)]
    if goal is not None:
        rows.append(verdict("120 s clips at concurrency 128, split, x real time", preset, graphs, split,
                            f">= {goal:g}", split is not None and split >= goal))
    rows.append(verdict("time to first token, one 10 s clip alone, s", preset, graphs, ttft, f"<= {TTFT_S:g}",
                        ttft is not None and ttft <= TTFT_S))
    if baseline:
        worst_ratio = min(ratios, default=None)
        rows.append(verdict("rate against the default graphs, every row and run, worst", preset, graphs,
                            worst_ratio, ">= 1 (make full the default)", worst_ratio is not None and worst_ratio >= 1))
    return rows + failed


def targets(folder: Path) -> list[dict]:
    default, full = newest(folder, "throughput"), newest(folder / FULL_GRAPHS, "throughput")
    rows = attention_rows(folder)
    for preset in sorted(set(default) | set(full)):
        rows += throughput_rows(default.get(preset), None, preset, "decode (default)")
        if preset in full:
            rows += throughput_rows(full[preset], default.get(preset), preset, "full")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a gpu-check run's results (its OUT folder)")


def main(args: argparse.Namespace) -> int:
    rows = targets(args.folder)
    print_table(rows)
    (args.folder / "targets.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0
