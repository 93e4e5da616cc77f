"""`make gpu-check`: proves and measures the GPU path on one H100/H200 in two prepared runs of at most 8 minutes.

    make gpu-wheels            # here, with network: the wheels the GPU image lacks, into .whl/ (ignored); it runs
                               # `python benchmarks/gpu_check.py wheels`
    make gpu-check PART=1      # there: the compiled kernels' tests, `bench kernels`, `bench step`
    make gpu-check PART=2      # there: `bench throughput` for the 0.6B and 1.7B shapes against transformers
    make gpu-check PART=3      # there, with 4.5 minutes left: the 0.6B and 1.7B throughput with every step from
                               # CUDA graphs (--cuda-graph-mode full), qasr alone (part 2 timed transformers)
    make gpu-check PART=tune   # on a GPU model not tuned for yet: `bench tune-attention` (tile widths, warps,
                               # stages, register caps, for bf16 and FP8 caches apart, and where a mixed step's
                               # decodes get a launch of their own)

Written for a machine without network whose CUDA image has python 3.12, torch with CUDA, triton, an older
transformers, numpy, aiohttp, prometheus-client, safetensors and tokenizers, and no qasr install: it runs with the
standard library alone, installs .whl/ with `pip install --no-index --no-deps --target .gpu-site`, links the source
folders into qasr/ so that the tree is the installed `qasr` package (as pyproject's package-dir maps it; the links
are git-ignored), and runs every step
under a time limit, its output into OUT (default ./benchmarks-results/gpu-check), the results as JSON naming the
device. A step that fails or runs out of time is reported and the next one runs; the summary comes last. Without
CUDA it stops at once and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".gpu-site"
WHEELS = ROOT / ".whl"
PACKAGES = ("engine", "scheduler", "kernels", "serve", "benchmarks")  # pyproject's package-dir: qasr.<name>
# what the GPU image lacks that the check needs (make gpu-wheels): transformers with Qwen3-ASR and the versions its
# import checks ask for, and pytest; av, soundfile, soxr and jiwer are not needed (the check feeds arrays)
WHEEL_SPECS = ("transformers==5.24.0", "tokenizers==0.23.3", "huggingface_hub>=1.31,<2", "regex>=2025.10.22",
               "safetensors>=0.8", "pytest==9.2.0", "pluggy", "iniconfig", "pygments")
GPU_TESTS = ("tests/kernels/test_attention.py", "tests/kernels/test_ops.py", "tests/kernels/test_windowed_attention.py",
             "tests/kernels/test_fp8.py", "tests/engine/test_decode_graphs.py", "tests/engine/test_mixed_graphs.py",
             "tests/engine/test_aligner.py", "tests/engine/test_sampler.py", "tests/engine/test_features.py")

# LABEL:SETTINGS for `bench kernels --variants` (kernels/triton/tuning.py): for FP8 caches 128-key tiles (3
# programs of 32 KB an SM where 64-key ones hold 2 of 16 KB), a cap of 128 registers (4 programs), the dot products
# in fp16, and their combinations; for bf16 a cap of 96 registers (5 programs of 32 KB where 4 fit; a stack of 56
# bytes with Triton 3.6). Register counts as Triton 3.6 compiles them (make sm90-check)
DECODE_CANDIDATES = ("fp8-fp16:fp8_dot_fp16=1", "fp8-t128:fp8_decode_tile_n=128",
                     "fp8-t128-fp16:fp8_decode_tile_n=128,fp8_dot_fp16=1", "fp8-r128:fp8_decode_max_registers=128",
                     "fp8-r128-fp16:fp8_decode_max_registers=128,fp8_dot_fp16=1",
                     "fp8-t128-r128:fp8_decode_tile_n=128,fp8_decode_max_registers=128", "r96:decode_max_registers=96")


def steps(part: str, out: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of each part: about 7 minutes each on an H100."""
    qasr = [sys.executable, "-m", "qasr"]
    results = ["--out-dir", str(out)]
    full_graphs = ["--out-dir", str(out / "full-graphs")]  # the same benchmarks' JSON names, one folder down
    first = [
        ("imports", [sys.executable, "-c", "import qasr.engine.llm_engine, qasr.kernels.triton.paged_attention, "
                     "transformers, torch; print('transformers', transformers.__version__, 'torch', "
                     "torch.__version__, torch.cuda.get_device_name())"], 60),
        # a file that does not collect must not take the other files' tests with it
        ("pytest -m gpu", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", *GPU_TESTS], 120),  # 39 s on an H200, before 7 more
        # flex compiles per case and torch is the CPU path: neither is worth the minutes. The variants: candidates
        # for the decode settings, against triton's rows
        ("bench kernels", [*qasr, "bench", "kernels", "--modes", "decode", "--impls", "triton", "triton-split",
                           "sdpa-flash", "--kv-cache-dtype", "auto", "fp8",
                           "--batch-sizes", "1", "8", "64", "128", "256", "--contexts", "128", "1024", "4096", "8192",
                           "--variants", *DECODE_CANDIDATES, *results], 90),  # 10 s on an H200 without them
        ("bench step", [*qasr, "bench", "step", "--preset", "0.6b", "--running", "64", "256", "512", *results], 60),
        # steps with a prefill chunk from graphs too: their host cost against the eager ones just above
        ("bench step full graphs", [*qasr, "bench", "step", "--preset", "0.6b", "--running", "64", "256", "512",
                                    "--cuda-graph-mode", "full", *full_graphs], 120),  # the eager one: 24 s,
        # without the captures of steps with prefill chunks and of the encoder (twice an engine: measured, then kept)
    ]
    second = [
        (f"bench throughput {preset}", [*qasr, "bench", "throughput", "--preset", preset, "--clip-seconds", "10", "30",
                                        "120", "--num-clips", "128", "--batch-size", "128", "--repeats", "1",
                                        # half the GPU for qasr's KV pool (it holds 128 x 120 s), half for transformers
                                        "--gpu-memory-utilization", "0.5", *results], limit)
        for preset, limit in (("0.6b", 230), ("1.7b", 200))
    ]
    # what is left of the 15 minutes after parts 1 and 2 (and a start), at most 270 s: the throughput with every step
    # from graphs (cuda_graph_mode full) against part 2's, qasr alone (its transformers rows are part 2's), 0.6B first
    full = [(f"bench throughput {preset} full graphs", [*qasr, "bench", "throughput", "--preset", preset,
                                                        "--clip-seconds", "10", "30", "120", "--num-clips", "128",
                                                        "--batch-size", "128", "--repeats", "1",
                                                        "--gpu-memory-utilization", "0.5", "--cuda-graph-mode", "full",
                                                        "--no-transformers", *full_graphs], limit)
            for preset, limit in (("0.6b", 140), ("1.7b", 130))]
    # the attention's launch parameters on a GPU model whose defaults were not tuned on (H200: 42 s for a grid of
    # two thirds the settings)
    tune = [("bench tune-attention", [*qasr, "bench", "tune-attention", *results], 200)]
    return {"1": first, "2": second, "3": full, "tune": tune, "all": first + second + full + tune}[part]


def download_wheels() -> None:
    """WHEEL_SPECS for CPython 3.12 on x86-64 Linux, into an emptied .whl/ (run where there is network)."""
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                    "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
                    "--abi", "none", "--dest", str(WHEELS), *WHEEL_SPECS], check=True)
    total = sum(path.stat().st_size for path in WHEELS.glob("*.whl"))
    print(f"gpu-wheels: {len(list(WHEELS.glob('*.whl')))} wheels, {total / 1e6:.1f} MB in {WHEELS}")


def require_cuda() -> None:
    probe = subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        why = "torch cannot be imported" if probe.returncode != 3 else "torch.cuda.is_available() is False"
        raise SystemExit(f"gpu-check: no CUDA device here ({why}): run it on a machine with an NVIDIA GPU")


def link_subpackages(package: Path = ROOT / "qasr") -> None:
    """Makes the tree's qasr/ folder the whole package, as pyproject installs it: each source folder linked in as a
    subpackage (the links are git-ignored). Run from the repository root, `import qasr` finds this folder first,
    so this must be it rather than a layout elsewhere."""
    for name in PACKAGES:
        link = package / name
        if link.is_symlink():
            link.unlink()
        link.symlink_to(ROOT / name, target_is_directory=True)


def install_wheels(site: Path) -> None:
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu-check: no wheels in {WHEELS}: run `make gpu-wheels` where there is network, and "
                         "bring .whl/ along")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade",
                    "--target", str(site), *map(str, wheels)], check=True)


def environment(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # tests/conftest.py would default it to 1: the GPU tests run the compiled kernels
    # the image's own pytest plugins (benchmark, cov, xdist, ...) were built for its pytest, not the carried one
    env.update(TRITON_INTERPRET="0", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return env


def run_step(name: str, command: list[str], limit: int, env: dict[str, str], log) -> tuple[str, float]:
    print(f"\n=== {name} (at most {limit} s): {' '.join(command)}", file=log, flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
        outcome = "ok" if done.returncode == 0 else f"failed ({done.returncode})"
    except subprocess.TimeoutExpired:
        outcome = "out of time"
    return outcome, time.monotonic() - start


def main(argv: list[str]) -> int:
    part = argv[0] if argv else "1"
    if part == "wheels":
        download_wheels()
        return 0
    if part not in ("1", "2", "3", "tune", "all"):
        raise SystemExit("usage: python3 benchmarks/gpu_check.py [1|2|3|tune|all|wheels]")
    require_cuda()
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks-results" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    install_wheels(SITE)
    link_subpackages()
    env = environment(SITE)
    summary = []
    with (out / f"gpu-check-part{part}.log").open("a") as log:
        subprocess.run(["nvidia-smi"], stdout=log, stderr=subprocess.STDOUT, check=False)
        for name, command, limit in steps(part, out):
            outcome, seconds = run_step(name, command, limit, env, log)
            summary.append((name, outcome, seconds))
            print(f"gpu-check: {name}: {outcome} in {seconds:.0f} s", flush=True)
    print(f"\ngpu-check part {part}: log and results in {out}")
    for name, outcome, seconds in summary:
        print(f"  {name:28s} {outcome:14s} {seconds:6.0f} s")
    print(flush=True)  # then the targets, as far as the results in OUT go (a second or two)
    try:
        subprocess.run(targets_command(out), cwd=ROOT, env=env, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        print("gpu-check: the targets took more than a minute; read them with `qasr bench targets` here")
    return 0 if all(outcome == "ok" for _, outcome, _ in summary) else 1


def targets_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "qasr", "bench", "targets", str(out)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
