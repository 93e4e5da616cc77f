"""The kernel benchmark end to end on the CPU at tiny shapes (Triton interpreted, as conftest sets it up)."""

import argparse
import json
from pathlib import Path

import torch

from qasr.benchmarks import kernels as bench
from qasr.kernels.triton.utils import interpreting

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def test_kernel_benchmark_writes_the_standard_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([
        "--device", "cpu", "--batch-sizes", "1", "3", "--contexts", "40", "--heads", "4", "--kv-heads", "2",
        "--head-dim", "16", "--kv-cache-dtype", "auto", "fp8", "--iters", "2", "--warmup", "1",
        "--out-dir", str(tmp_path)])
    assert bench.main(args) == 0
    [path] = tmp_path.glob("kernels-cpu-*.json")
    document = json.loads(path.read_text())
    assert set(document) == TOP_LEVEL_KEYS and document["benchmark"] == "kernels"
    assert document["config"]["copy_gb_s"] > 0
    rows = document["results"]
    impls = bench.default_impls(torch.device("cpu"))
    assert {(r["mode"], r["impl"]) for r in rows} == {
        (mode, impl) for mode in ("decode", "prefill") for impl in impls if mode == "decode" or impl != "triton-split"}
    assert {r["kv_dtype"] for r in rows if r["impl"] == "torch"} == {"float32", "float8_e4m3fn"}
    assert {r["kv_dtype"] for r in rows if r["impl"] == "triton-fp8-fp16"} == {"float8_e4m3fn"}  # FP8 caches only
    for r in rows:
        assert r["ms"] > 0 and r["gb_s"] > 0 and r["copy_fraction"] > 0 and r["tflops"] > 0 and r["vs_sdpa"] > 0


def test_default_implementations() -> None:
    impls = bench.default_impls(torch.device("cpu"))
    assert "flex" not in impls  # compiling flex on the CPU takes longer than the whole test
    assert ("triton" in impls) == interpreting()  # conftest turns the interpreter on
