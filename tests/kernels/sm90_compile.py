"""Compiles every Triton kernel for an H100 (sm_90) ahead of time, with no GPU: the interpreter accepts code that
the compiler rejects (dot shapes, dtype mixes, shared-memory overflow), so this is the CPU's check of the real
build. Prints one JSON line per kernel configuration: label, error (or null), registers, stack and shared bytes.

Run without TRITON_INTERPRET (tests/kernels/test_compile.py does, as two processes side by side: `sm90_compile.py
PART PARTS` compiles every PARTS-th configuration from PART on). The configurations are the ones the launch wrappers
pick at the real shapes (16 query and 8 KV heads of 128, blocks of 16 tokens).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qasr.kernels.attention_metadata import SPLIT_KV_SEGMENTS
from qasr.kernels.triton import activation, kv_store, norms, split_kv_attention, windowed_attention
from qasr.kernels.triton import paged_attention as unified
from qasr.kernels.triton.tuning import AttentionTuning, LaunchSettings

H100 = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
FLOAT_ARGS = {"qk_scale", "eps"}
HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 16, 8, 128, 16
TUNING = AttentionTuning()  # the defaults; QASR_ATTENTION_TUNING is not read here


def source(kernel: triton.JITFunction, pointers: dict[str, str], constexprs: dict[str, object],
           default_pointer: str = "*bf16") -> ASTSource:
    """Arguments as Triton specialises them at launch: pointers and strides 16-aligned, other ints plain i32."""
    signature, constants, attributes = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            constants[(i,)] = constexprs[name]
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, default_pointer)
            attributes[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name.startswith("stride"):
                attributes[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(kernel, signature, constants, attributes)


def compile_report(label: str, src: ASTSource, **options: object) -> dict:
    try:
        compiled = triton.compile(src, target=H100, options=options)
    except Exception as error:  # reported, not raised: every configuration gets its line
        return {"label": label, "error": f"{type(error).__name__}: {str(error)[:2000]}"}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    numbers = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage)}
    return {"label": label, "error": None, "registers": numbers.get("REG"), "stack": numbers.get("STACK"),
            "local": numbers.get("LOCAL"), "shared": compiled.metadata.shared}


def unified_attention(label: str, block_m: int, settings: LaunchSettings, dtype: str = "*bf16",
                      cache: str | None = None, precision: str = "tf32", fp16_dots: bool = False,
                      seq_range: str = unified.HOST_RANGE) -> dict:
    queries_per_kv = HEADS // KV_HEADS
    constexprs = {"HEAD_DIM": HEAD_DIM, "BLOCK_D": HEAD_DIM, "QUERIES_PER_KV": queries_per_kv, "BLOCK_M": block_m,
                  "BLOCK_Q": block_m // queries_per_kv, "TILE_N": settings.tile_n, "BLOCK_SIZE": BLOCK_SIZE,
                  "UPCAST": False, "FP16_DOTS": fp16_dots, "DOT_PRECISION": precision, "SEQ_RANGE": seq_range}
    pointers = {"k_cache_ptr": cache or dtype, "v_cache_ptr": cache or dtype, "block_tables_ptr": "*i32",
                "seq_lens_ptr": "*i32", "query_start_loc_ptr": "*i32", "num_decodes_ptr": "*i32"}
    report = compile_report(label, source(unified._unified_attention_kernel, pointers, constexprs, dtype),
                            **settings.compile_options())
    return report | {"max_registers": settings.max_registers or None}


def split_kv(label: str, cache: str = "*bf16", fp16_dots: bool = False) -> list[Callable[[], dict]]:
    pointers = {"k_cache_ptr": cache, "v_cache_ptr": cache, "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32",
                "query_start_loc_ptr": "*i32", "segment_out_ptr": "*fp32", "segment_max_ptr": "*fp32",
                "segment_expsum_ptr": "*fp32"}
    segment = {"NUM_HEADS": HEADS, "HEAD_DIM": HEAD_DIM, "BLOCK_D": HEAD_DIM, "QUERIES_PER_KV": HEADS // KV_HEADS,
               "BLOCK_M": split_kv_attention.MIN_BLOCK_M, "SEGMENTS": SPLIT_KV_SEGMENTS,
               "TILE_N": TUNING.split_tile_n, "BLOCK_SIZE": BLOCK_SIZE, "UPCAST": False, "FP16_DOTS": fp16_dots,
               "DOT_PRECISION": "tf32"}
    reduce = {"NUM_HEADS": HEADS, "HEAD_DIM": HEAD_DIM, "BLOCK_D": HEAD_DIM, "SEGMENTS": SPLIT_KV_SEGMENTS,
              "TILE_N": TUNING.split_tile_n}
    return [lambda: compile_report(f"split-KV segments {label}",
                                   source(split_kv_attention._segment_kernel, pointers, segment),
                                   num_warps=TUNING.split_num_warps, num_stages=TUNING.split_num_stages),
            lambda: compile_report(f"split-KV reduce {label}",
                                   source(split_kv_attention._reduce_segments_kernel, pointers, reduce))]


def configurations() -> list[Callable[[], dict]]:
    """One compilation each, run lazily so that a caller can share them out between processes."""
    decode, fp8_decode, prefill = TUNING.decode(fp8_cache=False), TUNING.decode(fp8_cache=True), TUNING.prefill()
    # a candidate for FP8's decode settings (tuning.py): twice the bytes a tile. Capped at 128 registers it spills a
    # little (a stack of 48-264 bytes, Triton 3.6-3.9), and 64-key tiles so capped do with Triton 3.9 (32)
    fp8_candidate = replace(fp8_decode, tile_n=128)
    decode_m, prefill_m = unified.DECODE_BLOCK_M, unified.PREFILL_BLOCK_M
    jobs = [
        lambda: unified_attention("unified decode bf16", decode_m, decode),
        lambda: unified_attention("unified short mixed bf16", decode_m, prefill),
        lambda: unified_attention("unified prefill bf16", prefill_m, prefill),
        # a mixed-step graph's two launches, the number of decodes read on the device (mixed_graphs.py)
        lambda: unified_attention("unified decode bf16, decodes counted on the device", decode_m, decode,
                                  seq_range=unified.DEVICE_DECODES),
        lambda: unified_attention("unified prefill bf16, after the decodes counted on the device", prefill_m,
                                  prefill, seq_range=unified.DEVICE_CHUNKS),
        lambda: unified_attention("unified decode fp16", decode_m, decode, "*fp16"),
        lambda: unified_attention("unified prefill fp16", prefill_m, prefill, "*fp16"),
        lambda: unified_attention("unified decode bf16 + fp8 cache", decode_m, fp8_decode, cache="*fp8e4nv"),
        lambda: unified_attention("unified prefill bf16 + fp8 cache", prefill_m, prefill, cache="*fp8e4nv"),
        lambda: unified_attention("unified decode bf16 + fp8 cache, fp16 dots", decode_m, fp8_decode,
                                  cache="*fp8e4nv", fp16_dots=True),
        lambda: unified_attention("unified prefill bf16 + fp8 cache, fp16 dots", prefill_m, prefill,
                                  cache="*fp8e4nv", fp16_dots=True),
        lambda: unified_attention("unified decode bf16 + fp8 cache, 128-key tiles", decode_m, fp8_candidate,
                                  cache="*fp8e4nv"),
        lambda: unified_attention("unified decode bf16 + fp8 cache, fp16 dots, 128-key tiles", decode_m,
                                  fp8_candidate, cache="*fp8e4nv", fp16_dots=True),
        # the register cap reaches the compiler (uncapped: 168 registers with Triton 3.9, 194 with 3.6)
        lambda: unified_attention("unified decode bf16 + fp8 cache, 160 registers", decode_m,
                                  replace(fp8_decode, max_registers=160), cache="*fp8e4nv"),
        lambda: unified_attention("unified prefill fp32 (ieee)", prefill_m, prefill, "*fp32", precision="ieee"),
        *split_kv("bf16"),
        *split_kv("fp8 cache", cache="*fp8e4nv"),
        *split_kv("fp8 cache, fp16 dots", cache="*fp8e4nv", fp16_dots=True)[:1],  # the reduce is the same
    ]
    store = {"HEAD_DIM": HEAD_DIM, "BLOCK_SIZE": BLOCK_SIZE, "BLOCK_H": KV_HEADS, "BLOCK_D": HEAD_DIM}
    for label, cache, fp8 in (("bf16", "*bf16", False), ("fp8", "*fp8e4nv", True)):
        pointers = {"k_cache_ptr": cache, "v_cache_ptr": cache, "slot_mapping_ptr": "*i64"}
        jobs.append(lambda label=label, pointers=pointers, fp8=fp8: compile_report(
            f"KV store {label}", source(kv_store._store_kv_kernel, pointers, {**store, "FP8": fp8})))
    window = {"HEAD_DIM": 64, "BLOCK_D": 64, "BLOCK_M": windowed_attention.BLOCK_M,
              "TILE_N": windowed_attention.TILE_N, "UPCAST": False, "DOT_PRECISION": "tf32"}
    jobs.append(lambda: compile_report("encoder windowed attention bf16", source(
        windowed_attention._window_attention_kernel, {"cu_window_ptr": "*i32"}, window)))
    jobs.append(lambda: compile_report("add + RMSNorm 2048", source(
        norms._add_rms_norm_kernel, {}, {"HIDDEN": 2048, "BLOCK": 2048, "HAS_RESIDUAL": True}), num_warps=8))
    jobs.append(lambda: compile_report("q/k RMSNorm + RoPE", source(
        norms._qk_norm_rope_kernel, {"positions_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32"},
        {"NUM_Q_HEADS": HEADS, "NUM_KV_HEADS": KV_HEADS, "HEAD_DIM": HEAD_DIM, "BLOCK_HQ": HEADS,
         "BLOCK_HK": KV_HEADS, "BLOCK_D": HEAD_DIM})))
    for label, cache, fp8 in (("bf16", "*bf16", False), ("fp8", "*fp8e4nv", True)):
        jobs.append(lambda label=label, cache=cache, fp8=fp8: compile_report(
            f"q/k RMSNorm + RoPE + KV store {label}", source(
                norms._qk_norm_rope_store_kernel,
                {"positions_ptr": "*i64", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "k_cache_ptr": cache,
                 "v_cache_ptr": cache, "slot_mapping_ptr": "*i64"},
                {"NUM_Q_HEADS": HEADS, "NUM_KV_HEADS": KV_HEADS, "HEAD_DIM": HEAD_DIM, "BLOCK_SIZE": BLOCK_SIZE,
                 "BLOCK_HQ": HEADS, "BLOCK_HK": KV_HEADS, "BLOCK_D": HEAD_DIM, "FP8": fp8})))
    jobs.append(lambda: compile_report("SiLU and mul 6144", source(
        activation._silu_and_mul_kernel, {}, {"INTERMEDIATE": 6144, "BLOCK": 1024})))
    return jobs


def main(part: int, parts: int) -> None:
    """Compiles every `parts`-th configuration from `part` on (the test runs the parts side by side)."""
    for job in configurations()[part::parts]:
        print(json.dumps(job()), flush=True)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET: the interpreter replaces the kernels this script compiles")
    part, parts = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (0, 1)
    main(part, parts)
