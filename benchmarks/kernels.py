"""Attention kernels at Qwen3-ASR decoder shapes: qasr's paged attention against torch SDPA and FlexAttention.

    qasr bench kernels [--kv-cache-dtype auto fp8] ...     (or python -m benchmarks.kernels ...)

Modes: decode (one query per sequence over `context` cached keys) and prefill (a fresh causal prompt of
`context` tokens per sequence). Implementations:

    triton        qasr's unified attention (2D grid) over the paged cache
    triton-split  qasr's split-KV decode, wherever the heuristic (use_split_kv) picks it
    triton:LABEL  the unified attention with the attention tuning changed as `--variants LABEL:SETTINGS` says
                  (QASR_ATTENTION_TUNING's syntax, over the process's tuning), on the caches where that changes
                  the launch: `--variants fp8-t128:fp8_decode_tile_n=128` times FP8 decodes in 128-key tiles
    torch         qasr's torch reference backend over the paged cache (gathers, then SDPA)
    sdpa-flash    F.scaled_dot_product_attention, flash backend, on contiguous per-sequence K/V in the model
                  dtype: no paging and no FP8, the best case for the baseline
    flex          torch.compile(flex_attention) on the same contiguous K/V (default on CUDA only: compiling is slow)

Time per call is the median over --iters calls: on CUDA between events, with L2 flushed before each call and
the host queued ahead of the device so launch gaps are not timed; on the CPU with perf_counter. GB/s counts
the bytes each implementation must move at least once (K/V in its own dtype, Q and O); copy_fraction divides
it by the device's copy bandwidth (a large tensor.copy_, read + write) measured in the same run. On the CPU
triton runs only under TRITON_INTERPRET=1.
"""

import argparse
import functools
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.engine.model_loader import resolve_device
from qasr.kernels import AttentionMetadata, SplitKVWorkspace
from qasr.kernels.kv_cache_dtype import is_fp8, resolve_kv_cache_dtype, to_cache_dtype
from qasr.kernels.reference import paged_attention
from qasr.kernels.triton.tuning import AttentionTuning, attention_tuning, current_tuning

IMPLS = ("triton", "triton-split", "torch", "sdpa-flash", "flex")
BASELINES = ("sdpa-flash", "flex")  # contiguous K/V in the model dtype, the same for every kv_cache_dtype
L2_FLUSH_BYTES = 256 << 20
HOST_HEAD_START_CYCLES = 20_000_000  # ~10 ms of device sleep while the host queues the timed calls


@dataclass(frozen=True)
class Geometry:
    heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype


@dataclass
class Case:
    mode: str  # "decode" | "prefill"
    batch: int
    context: int
    query: torch.Tensor  # [batch * query_len, heads, head_dim], packed as the engine packs it

    @property
    def query_len(self) -> int:
        return 1 if self.mode == "decode" else self.context


def make_case(mode: str, batch: int, context: int, g: Geometry, device: torch.device) -> Case:
    query_len = 1 if mode == "decode" else context
    query = torch.randn(batch * query_len, g.heads, g.head_dim, dtype=g.dtype, device=device)
    return Case(mode, batch, context, query)


def paged_kv(case: Case, g: Geometry, kv_dtype: torch.dtype,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """A paged cache whose blocks are scattered (a random permutation), and the metadata of the batch."""
    from qasr.kernels.attention_metadata import padded_head_dim

    blocks_per_seq = math.ceil(case.context / g.block_size)
    num_blocks = case.batch * blocks_per_seq
    shape = (num_blocks, g.block_size, g.kv_heads, g.head_dim)
    k_cache = to_cache_dtype(torch.randn(shape, dtype=g.dtype, device=device), kv_dtype)
    v_cache = to_cache_dtype(torch.randn(shape, dtype=g.dtype, device=device), kv_dtype)
    tables = torch.randperm(num_blocks, device=device).to(torch.int32).view(case.batch, blocks_per_seq)
    q_len = case.query_len
    meta = AttentionMetadata(
        slot_mapping=torch.full((case.batch * q_len,), -1, dtype=torch.long, device=device),
        query_start_loc=torch.arange(case.batch + 1, dtype=torch.int32, device=device) * q_len,
        seq_lens=torch.full((case.batch,), case.context, dtype=torch.int32, device=device),
        block_tables=tables, max_query_len=q_len, max_seq_len=case.context,
        query_lens_host=[q_len] * case.batch, seq_lens_host=[case.context] * case.batch,
        split_kv_workspace=(SplitKVWorkspace.allocate(case.batch, g.heads, padded_head_dim(g.head_dim), device)
                            if case.mode == "decode" else None))
    return k_cache, v_cache, meta


@dataclass(frozen=True)
class Variant:
    """An attention tuning to time beside the process's own (`--variants LABEL:SETTINGS`)."""
    label: str
    tuning: AttentionTuning

    @classmethod
    def parse(cls, text: str) -> "Variant":
        label, colon, settings = text.partition(":")
        if not colon or not re.fullmatch(r"[\w.+-]+", label):
            raise argparse.ArgumentTypeError(f"{text!r} is not LABEL:SETTINGS (e.g. fp8-t128:fp8_decode_tile_n=128)")
        try:  # later settings win: the variant's over the process's
            tuning = AttentionTuning.parse(",".join(filter(None, (current_tuning().describe(), settings))))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return cls(label, tuning)

    def changes_launch(self, cache_dtype: torch.dtype, mode: str) -> bool:
        """Whether a `mode` case ("decode": a pure-decode batch, "prefill") over a cache of `cache_dtype` launches
        otherwise than with the process's tuning."""
        from qasr.kernels.triton.utils import fp16_dots  # imports triton: not at `qasr` start-up

        def launch(tuning: AttentionTuning) -> tuple:
            settings = tuning.decode(is_fp8(cache_dtype)) if mode == "decode" else tuning.prefill()
            return settings, fp16_dots(cache_dtype, tuning.fp8_dot_fp16)
        return launch(self.tuning) != launch(current_tuning())


def paged_impls(case: Case, g: Geometry, kv_dtype: torch.dtype, device: torch.device, wanted: list[str],
                variants: list[Variant]) -> dict[str, Callable[[], torch.Tensor]]:
    k_cache, v_cache, meta = paged_kv(case, g, kv_dtype, device)
    scale = g.head_dim**-0.5
    impls: dict[str, Callable[[], torch.Tensor]] = {}
    if {"triton", "triton-split"} & set(wanted) or variants:
        from qasr.kernels.triton.paged_attention import unified_attention, use_split_kv

        if "triton" in wanted:
            impls["triton"] = lambda: unified_attention(case.query, k_cache, v_cache, meta, scale, split_kv=False)
        if "triton-split" in wanted and use_split_kv(meta, g.kv_heads):
            impls["triton-split"] = lambda: unified_attention(case.query, k_cache, v_cache, meta, scale,
                                                              split_kv=True)
        for variant in (v for v in variants if v.changes_launch(kv_dtype, case.mode)):
            def tuned(tuning: AttentionTuning = variant.tuning) -> torch.Tensor:
                with attention_tuning(tuning):
                    return unified_attention(case.query, k_cache, v_cache, meta, scale, split_kv=False)
            impls[f"triton:{variant.label}"] = tuned
    if "torch" in wanted:
        impls["torch"] = lambda: paged_attention.paged_attention(case.query, k_cache, v_cache, meta, scale)
    return impls


def baseline_impls(case: Case, g: Geometry, device: torch.device,
                   wanted: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """SDPA and FlexAttention over contiguous [batch, kv_heads, context, head_dim] K/V: no paging."""
    shape = (case.batch, g.kv_heads, case.context, g.head_dim)
    k, v = (torch.randn(shape, dtype=g.dtype, device=device) for _ in range(2))
    q = case.query.view(case.batch, case.query_len, g.heads, g.head_dim).transpose(1, 2)
    causal = case.mode == "prefill"
    impls: dict[str, Callable[[], torch.Tensor]] = {}
    if "sdpa-flash" in wanted:
        def sdpa() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

        impls["sdpa-flash"] = sdpa
    if "flex" in wanted:
        from torch.nn.attention.flex_attention import create_block_mask

        torch._dynamo.reset()  # a fresh compile per shape instead of hitting the recompile limit
        flex = compiled_flex_attention()
        mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, B=None, H=None,
                                 Q_LEN=case.context, KV_LEN=case.context, device=device) if causal else None
        impls["flex"] = lambda: flex(q, k, v, block_mask=mask, enable_gqa=True)
    return impls


@functools.cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median milliseconds per call."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    flush = l2_flush_buffer(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    torch.cuda.synchronize(device)
    torch.cuda._sleep(HOST_HEAD_START_CYCLES)
    for start, end in events:
        flush.zero_()  # each flush outlasts a host-side launch, so the device never waits for the host
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


@functools.cache
def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)


def copy_bandwidth_gb_s(device: torch.device, iters: int) -> float:
    """Device-to-device copy bandwidth: bytes read plus bytes written per second."""
    size = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, max(iters, 3), warmup=2)
    return 2 * size / ms / 1e6


def traffic(case: Case, g: Geometry, kv_itemsize: int) -> tuple[int, float]:
    """(bytes each implementation must move at least once, attention FLOPs) of one call."""
    kv_bytes = 2 * case.batch * case.context * g.kv_heads * g.head_dim * kv_itemsize
    qo_bytes = 2 * case.query.numel() * g.dtype.itemsize
    keys_per_query = case.context if case.mode == "decode" else (case.context + 1) / 2  # causal average
    flops = 4 * case.query.shape[0] * g.heads * g.head_dim * keys_per_query
    return kv_bytes + qo_bytes, flops


def row(case: Case, impl: str, kv_dtype: torch.dtype, ms: float, g: Geometry, copy_gb_s: float) -> dict:
    moved, flops = traffic(case, g, kv_dtype.itemsize)
    gb_s = moved / ms / 1e6
    return {"mode": case.mode, "batch": case.batch, "context": case.context, "impl": impl,
            "kv_dtype": str(kv_dtype).removeprefix("torch."), "ms": ms, "gb_s": gb_s,
            "copy_fraction": gb_s / copy_gb_s, "tflops": flops / ms / 1e9, "vs_sdpa": None}


def interpreting() -> bool:
    from qasr.kernels.triton.utils import interpreting  # imports triton: not at `qasr` start-up

    return interpreting()


def default_impls(device: torch.device) -> list[str]:
    impls = ["torch", "sdpa-flash"]
    if device.type == "cuda" or interpreting():
        impls = ["triton", "triton-split", *impls]
    if device.type == "cuda":
        impls.append("flex")
    return impls


def run(args: argparse.Namespace, device: torch.device, g: Geometry) -> tuple[list[dict], float]:
    impls = args.impls or default_impls(device)
    kv_dtypes = [resolve_kv_cache_dtype(name, g.dtype) for name in args.kv_cache_dtype]
    copy_gb_s = copy_bandwidth_gb_s(device, args.iters)
    rows: list[dict] = []
    for mode in args.modes:
        for batch in args.batch_sizes:
            for context in args.contexts:
                if mode == "prefill" and batch * context > args.max_prefill_tokens:
                    continue
                case = make_case(mode, batch, context, g, device)
                measured = [(name, g.dtype, fn) for name, fn in baseline_impls(case, g, device, impls).items()]
                measured += [(name, kv_dtype, fn) for kv_dtype in kv_dtypes
                             for name, fn in paged_impls(case, g, kv_dtype, device, impls, args.variants).items()]
                case_rows = []
                for name, kv_dtype, fn in measured:
                    try:
                        ms = time_ms(fn, device, args.iters, args.warmup)
                    except RuntimeError as error:  # out of memory, or no flash kernel for a shape
                        print(f"skipped {name} {mode} batch {batch} context {context}: {error}")
                        continue
                    case_rows.append(row(case, name, kv_dtype, ms, g, copy_gb_s))
                sdpa_ms = next((r["ms"] for r in case_rows if r["impl"] == "sdpa-flash"), None)
                for r in case_rows:
                    r["vs_sdpa"] = sdpa_ms / r["ms"] if sdpa_ms else None
                rows += case_rows
                del case
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows, copy_gb_s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--modes", nargs="+", choices=["decode", "prefill"], default=["decode", "prefill"])
    parser.add_argument("--kv-cache-dtype", nargs="+", choices=["auto", "fp8"], default=["auto"],
                        help="cache dtypes for the paged implementations (auto = --dtype)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                        help="default: all on CUDA; torch and sdpa-flash on the CPU, plus triton if interpreted")
    parser.add_argument("--variants", nargs="+", type=Variant.parse, default=[], metavar="LABEL:SETTINGS",
                        help="attention tunings to time as impl triton:LABEL beside triton, e.g. "
                             "fp8-t128:fp8_decode_tile_n=128 (where they change the launch for a cache)")
    parser.add_argument("--heads", type=int, default=16, help="query heads (Qwen3-ASR: 16)")
    parser.add_argument("--kv-heads", type=int, default=8, help="KV heads (Qwen3-ASR: 8)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="query and model dtype; default bfloat16 on cuda, else float32")
    parser.add_argument("--max-prefill-tokens", type=int, default=16384, help="skip prefill cases above batch*context")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    add_output_arguments(parser)


def variant_speedups(rows: list[dict]) -> dict[str, dict]:
    """Per variant and cache dtype, triton's time over the variant's on the same cases (above 1: the variant is
    faster): the median, the extremes and the median at batch >= 64 (where the throughput runs decode)."""
    triton = {(r["mode"], r["batch"], r["context"], r["kv_dtype"]): r["ms"] for r in rows if r["impl"] == "triton"}
    ratios: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        case = (r["mode"], r["batch"], r["context"], r["kv_dtype"])
        if r["impl"].startswith("triton:") and case in triton:
            ratios.setdefault(f"{r['impl'].removeprefix('triton:')} {r['kv_dtype']}", []).append(
                (r["batch"], triton[case] / r["ms"]))
    summary = {}
    for key, pairs in ratios.items():
        values, large = [v for _, v in pairs], [v for batch, v in pairs if batch >= 64]
        summary[key] = {"cases": len(values), "median": statistics.median(values), "min": min(values),
                        "max": max(values), "median_batch_64_up": statistics.median(large) if large else None}
    return summary


def main(args: argparse.Namespace) -> int:
    labels = [variant.label for variant in args.variants]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"bench kernels: each variant needs a label of its own, got {', '.join(labels)}")
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    g = Geometry(args.heads, args.kv_heads, args.head_dim, args.block_size, dtype)
    rows, copy_gb_s = run(args, device, g)
    timed = {row["impl"] for row in rows}
    for label in labels:
        if f"triton:{label}" not in timed:
            print(f"variant {label}: launches as triton does in every case here, so it was not timed")
    config = {"heads": g.heads, "kv_heads": g.kv_heads, "head_dim": g.head_dim, "block_size": g.block_size,
              "dtype": str(dtype), "modes": args.modes, "batch_sizes": args.batch_sizes, "contexts": args.contexts,
              "kv_cache_dtypes": args.kv_cache_dtype, "impls": sorted({r["impl"] for r in rows}),
              "variants": {v.label: v.tuning.describe() for v in args.variants},
              "iters": args.iters, "warmup": args.warmup, "max_prefill_tokens": args.max_prefill_tokens,
              "copy_gb_s": copy_gb_s, "interpreted": interpreting(), "variant_speedups": variant_speedups(rows)}
    print_table(rows)
    print(f"device-to-device copy: {copy_gb_s:.1f} GB/s")
    for key, speedup in config["variant_speedups"].items():
        large = speedup["median_batch_64_up"]
        print(f"variant {key}: {speedup['median']:.2f}x triton's speed at the median of {speedup['cases']} cases "
              f"({speedup['min']:.2f}-{speedup['max']:.2f}x)" + (f", {large:.2f}x at batch >= 64" if large else ""))
    print(f"results: {write_results('kernels', device, config, rows, args.out_dir)}")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
