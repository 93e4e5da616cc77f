"""The kernel benchmark end to end on the CPU at tiny shapes (Triton interpreted, as conftest sets it up)."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from qasr.benchmarks import kernels as bench
from qasr.kernels.triton.tuning import AttentionTuning, attention_tuning
from qasr.kernels.triton.utils import interpreting

TOP_LEVEL_KEYS = {"benchmark", "date", "git_commit", "device", "versions", "config", "results"}


def test_kernel_benchmark_writes_the_standard_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([
        "--device", "cpu", "--batch-sizes", "1", "3", "--contexts", "40", "--heads", "4", "--kv-heads", "2",
        "--head-dim", "16", "--kv-cache-dtype", "auto", "fp8", "--iters", "2", "--warmup", "1",
        "--variants", "fp8-fp16:fp8_dot_fp16=1", "t32:decode_tile_n=32,fp8_decode_tile_n=32",
        "--out-dir", str(tmp_path)])
    assert bench.main(args) == 0
    [path] = tmp_path.glob("kernels-cpu-*.json")
    document = json.loads(path.read_text())
    assert set(document) == TOP_LEVEL_KEYS and document["benchmark"] == "kernels"
    assert document["config"]["copy_gb_s"] > 0
    rows = document["results"]
    impls = bench.default_impls(torch.device("cpu"))
    variants = {"triton:fp8-fp16", "triton:t32"}
    assert {(r["mode"], r["impl"]) for r in rows} == {
        (mode, impl) for mode in ("decode", "prefill") for impl in [*impls, *variants]
        if mode == "decode" or impl not in ("triton-split", "triton:t32")}  # t32 changes no prefill launch...
    # ... and runs in decode on every cache; fp8_dot_fp16 changes nothing over a cache in the model's dtype
    assert {r["kv_dtype"] for r in rows if r["impl"] == "torch"} == {"float32", "float8_e4m3fn"}
    assert {r["kv_dtype"] for r in rows if r["impl"] == "triton:t32"} == {"float32", "float8_e4m3fn"}
    assert {r["kv_dtype"] for r in rows if r["impl"] == "triton:fp8-fp16"} == {"float8_e4m3fn"}
    assert document["config"]["variants"] == {"fp8-fp16": "fp8_dot_fp16=1",
                                              "t32": "decode_tile_n=32,fp8_decode_tile_n=32"}
    assert set(document["config"]["variant_speedups"]) == {"fp8-fp16 float8_e4m3fn", "t32 float32",
                                                           "t32 float8_e4m3fn"}
    for r in rows:
        assert r["ms"] > 0 and r["gb_s"] > 0 and r["copy_fraction"] > 0 and r["tflops"] > 0 and r["vs_sdpa"] > 0


def test_default_implementations() -> None:
    impls = bench.default_impls(torch.device("cpu"))
    assert "flex" not in impls  # compiling flex on the CPU takes longer than the whole test
    assert ("triton" in impls) == interpreting()  # conftest turns the interpreter on


def test_a_variant_is_label_colon_settings_over_the_process_tuning() -> None:
    with attention_tuning(AttentionTuning(decode_num_warps=8, fp8_dot_fp16=1)):
        variant = bench.Variant.parse("fp8-t128:fp8_decode_tile_n=128,fp8_dot_fp16=0")
        assert variant.tuning == AttentionTuning(decode_num_warps=8, fp8_decode_tile_n=128)
        # over FP8: other tiles in decode and bf16 dots in both; over bf16 the same launches
        assert variant.changes_launch(torch.float8_e4m3fn, "decode")
        assert variant.changes_launch(torch.float8_e4m3fn, "prefill")
        assert not variant.changes_launch(torch.bfloat16, "decode")
        assert not variant.changes_launch(torch.bfloat16, "prefill")
    for bad in ("fp8_decode_tile_n=128", "a b:decode_tile_n=32", "x:decode_tile_n=24", "x:tile=3"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.Variant.parse(bad)


def test_variants_need_labels_of_their_own_and_one_that_changes_nothing_is_named(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    common = ["--device", "cpu", "--batch-sizes", "2", "--contexts", "20", "--heads", "4", "--kv-heads", "2",
              "--head-dim", "16", "--modes", "decode", "--impls", "torch", "--iters", "1", "--warmup", "0",
              "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="a label of its own"):
        bench.main(parser.parse_args([*common, "--variants", "a:decode_tile_n=32", "a:decode_tile_n=16"]))
    assert bench.main(parser.parse_args([*common, "--variants", "split:split_tile_n=64"])) == 0
    assert "variant split: launches as triton does in every case here" in capsys.readouterr().out


def test_each_variant_is_summed_up_against_triton_on_the_same_cases() -> None:
    def row(impl: str, batch: int, ms: float, kv_dtype: str = "float8_e4m3fn") -> dict:
        return {"mode": "decode", "batch": batch, "context": 1024, "kv_dtype": kv_dtype, "impl": impl, "ms": ms}
    rows = [row("triton", 8, 1.0), row("triton:t128", 8, 2.0), row("triton", 64, 3.0), row("triton:t128", 64, 1.0),
            row("triton", 256, 4.0), row("triton:t128", 256, 2.0), row("triton:t128", 512, 1.0),  # no triton row
            row("triton", 64, 1.0, "bfloat16"), row("triton:t128", 64, 0.8, "bfloat16"), row("sdpa-flash", 64, 9.0)]
    summary = bench.variant_speedups(rows)
    assert summary == {
        "t128 float8_e4m3fn": {"cases": 3, "median": 2.0, "min": 0.5, "max": 3.0, "median_batch_64_up": 2.5},
        "t128 bfloat16": {"cases": 1, "median": 1.25, "min": 1.25, "max": 1.25, "median_batch_64_up": 1.25}}
