"""Every benchmark prints a table and writes one JSON document with the same top-level keys: benchmark, date,
git_commit, device, versions (torch, triton, transformers), config (what was measured and how) and results (rows of
named numbers, units in the key names, e.g. `rtfx`, `p95_latency_s`)."""

import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

RESULTS_DIR = Path("benchmarks-results")  # under the directory the benchmark runs from, never the installed package


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help="folder for the results JSON (default: ./benchmarks-results)")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # machines of one model name differ in vector units (AVX2 only, or AVX512), and so in speed: the widest torch uses
    return f"{cpu} ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()})"


def git_commit() -> str:
    """The commit of the source tree qasr runs from; "unknown" for an installed wheel."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {"torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__}


def write_results(benchmark: str, device: torch.device | str, config: dict, rows: list[dict], out_dir: Path,
                  name: str | None = None) -> Path:
    """`device` is this machine's device, or the description of one elsewhere (a remote server's); `name` goes into
    the file's name (two runs of a day that differ in it keep both files)."""
    local = isinstance(device, torch.device)
    document = {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": device_name(device) if local else device,
        "versions": versions(),
        "config": config,
        "results": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = ("cuda" if device.type == "cuda" else "cpu") if local else "remote"
    path = out_dir / f"{benchmark}-{tag}-{document['date'][:10]}{f'-{name}' if name else ''}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(column for row in rows for column in row))
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
