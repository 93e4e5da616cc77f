"""`qasr bench tune-attention`: the decoder attention's launch parameters (kernels/triton/tuning.py) timed on this
device at Qwen3-ASR's shapes; prints the setting to use and the QASR_ATTENTION_TUNING line that sets it.

    qasr bench tune-attention                                        # on an H100/H200: a minute or two
    qasr bench tune-attention --batch-sizes 1 4 --contexts 40 --heads 4 --kv-heads 2 --head-dim 16 --iters 2
                                                                     # the interpreter on the CPU: a check only

Four paths, each over its grid of settings and the shapes it serves, every setting checked against the torch
reference before it is timed (a setting that fails to compile or to match is reported, not timed):

    decode  the 2D kernel on pure-decode batches over a cache in the model's dtype: decode_tile_n x
            decode_num_warps x decode_num_stages x decode_max_registers
    fp8_decode  the same over an FP8 cache (fp8_decode_*), x fp8_dot_fp16
    split   the split-KV kernels on small decode batches: split_tile_n x split_num_warps x split_num_stages, and
            the workspace's segment count (attention_metadata.SPLIT_KV_SEGMENTS, not a launch parameter)
    mixed   a step of decodes and one prefill chunk (`--mixed-chunk` tokens): the decodes in the chunk's launch, or
            in a launch of their own with the decode settings (decode_launch_min_seqs, fp8_...)

For each path the recommended setting is the one whose worst slowdown against the best setting of each shape is
least (one setting serves every shape), and `split_wins_up_to` is, for each context, the largest batch at which the
best split setting beats the best 2D one: what use_split_kv's threshold should follow. `decode_launch_from` is, for
each cache and context, the fewest decodes from which their own launch is faster at every larger batch timed; the
largest of these per kind of cache is the decode_launch_min_seqs (fp8_decode_launch_min_seqs) to set (device time
only: each launch more also costs the host some 10-20 us a layer, which a small step may not have to spare). Times
as in `bench kernels` (CUDA events, L2 flushed before each call); GB/s and copy_fraction against the copy bandwidth
measured in the run.
"""

import argparse
import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qasr.benchmarks.kernels import Geometry, copy_bandwidth_gb_s, make_case, paged_kv, time_ms, traffic
from qasr.benchmarks.report import add_output_arguments, print_table, write_results
from qasr.engine.model_loader import resolve_device
from qasr.kernels import AttentionMetadata, SplitKVWorkspace
from qasr.kernels.attention_metadata import SPLIT_KV_SEGMENTS, padded_head_dim
from qasr.kernels.kv_cache_dtype import is_fp8, resolve_kv_cache_dtype, to_cache_dtype
from qasr.kernels.reference import paged_attention as reference
from qasr.kernels.triton.paged_attention import unified_attention
from qasr.kernels.triton.tuning import ENV_VAR, AttentionTuning, attention_tuning

RELATIVE_TOLERANCE = 2e-2  # max |out - reference| over max |reference|: bf16 rounding, not a wrong result
DECODE_PATHS = ("decode", "fp8_decode")  # the 2D kernel's decode settings over each kind of cache
FP8_NAME = "float8"  # how the rows' kv_dtype names an FP8 cache


def decode_path(kv_dtype: torch.dtype) -> str:
    return "fp8_decode" if is_fp8(kv_dtype) else "decode"


@dataclass(frozen=True)
class Setting:
    path: str  # "decode" | "fp8_decode" | "split"
    tile_n: int
    num_warps: int
    num_stages: int
    max_registers: int = 0  # decode paths only
    fp16_dots: int = 0  # fp8_decode only: fp8_dot_fp16, which FP8's prefill and split-KV launches follow too
    segments: int | None = None  # split only

    @property
    def tuning(self) -> AttentionTuning:
        """The defaults with this setting's path changed (a value the kernels cannot take raises ValueError)."""
        values = {f"{self.path}_tile_n": self.tile_n, f"{self.path}_num_warps": self.num_warps,
                  f"{self.path}_num_stages": self.num_stages}
        if self.path in DECODE_PATHS:
            values[f"{self.path}_max_registers"] = self.max_registers
        if self.path == "fp8_decode":
            values["fp8_dot_fp16"] = self.fp16_dots
        return AttentionTuning(**values)

    @property
    def is_default(self) -> bool:
        return not self.tuning.describe() and self.segments in (None, SPLIT_KV_SEGMENTS)

    @property
    def label(self) -> str:
        label = f"tile {self.tile_n} warps {self.num_warps} stages {self.num_stages}"
        if self.max_registers:
            label += f" registers {self.max_registers}"
        if self.fp16_dots:
            label += " fp16 dots"
        return label if self.segments is None else f"{label} segments {self.segments}"


def settings(args: argparse.Namespace) -> list[Setting]:
    """The grid; a value the kernels cannot take (a tile of 24, 3 warps) is refused here, before any timing."""
    decode = list(itertools.product(args.decode_tile_n, args.num_warps, args.num_stages, args.max_registers))
    grid = [Setting("decode", *values) for values in decode]
    grid += [Setting("fp8_decode", *values, fp16_dots=dots) for values in decode for dots in args.fp8_dot_fp16]
    grid += [Setting("split", tile, warps, stages, segments=segments)
             for tile, warps, stages, segments in itertools.product(
                 args.split_tile_n, args.split_num_warps, args.split_num_stages, args.segments)]
    for setting in grid:
        setting.tuning  # noqa: B018 -- validates
        if setting.segments is not None and (setting.segments < 1 or setting.segments & (setting.segments - 1)):
            raise ValueError(f"split-KV segments must be a power of two, got {setting.segments}")
    return grid


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.float() - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()


def checked_and_timed(call: Callable[[], torch.Tensor], expected: torch.Tensor, moved: int, device: torch.device,
                      args: argparse.Namespace, copy_gb_s: float, *, path: str, kv_dtype: torch.dtype, batch: int,
                      context: int, setting: str) -> dict:
    """One setting's row: `call` checked against the reference, then timed; a call that strays from it or does not
    compile is a result (its error), not the end of the run."""
    row = {"path": path, "kv_dtype": str(kv_dtype).removeprefix("torch."), "batch": batch, "context": context,
           "setting": setting, "ms": None, "gb_s": None, "copy_fraction": None, "vs_default": None, "error": None}
    try:
        error = relative_error(call(), expected)
        if error > RELATIVE_TOLERANCE:
            row["error"] = f"relative error {error:.3g}"
        else:
            ms = time_ms(call, device, args.iters, args.warmup)
            row.update(ms=ms, gb_s=moved / ms / 1e6, copy_fraction=moved / ms / 1e6 / copy_gb_s)
    except Exception as failure:  # noqa: BLE001
        row["error"] = f"{type(failure).__name__}: {str(failure)[:200]}"
    return row


def measure_shape(path: str, batch: int, context: int, kv_dtype: torch.dtype, grid: list[Setting], g: Geometry,
                  device: torch.device, args: argparse.Namespace, copy_gb_s: float) -> list[dict]:
    """Every setting of `path` on one shape: checked against the reference, then timed."""
    case = make_case("decode", batch, context, g, device)
    k_cache, v_cache, meta = paged_kv(case, g, kv_dtype, device)
    scale = g.head_dim**-0.5
    expected = reference.paged_attention(case.query.float(), k_cache.float(), v_cache.float(), meta, scale)
    moved, _ = traffic(case, g, kv_dtype.itemsize)
    rows, default_ms = [], None
    for setting in (s for s in grid if s.path == path):
        if setting.segments is not None:
            meta.split_kv_workspace = SplitKVWorkspace.allocate(batch, g.heads, padded_head_dim(g.head_dim), device,
                                                                segments=setting.segments)
        def call(tuning: AttentionTuning = setting.tuning) -> torch.Tensor:
            with attention_tuning(tuning):
                return unified_attention(case.query, k_cache, v_cache, meta, scale, split_kv=path == "split")

        row = checked_and_timed(call, expected, moved, device, args, copy_gb_s, path=path, kv_dtype=kv_dtype,
                                batch=batch, context=context, setting=setting.label)
        if setting.is_default and row["ms"]:
            default_ms = row["ms"]
        rows.append(row)
    for row in rows:
        if default_ms and row["ms"]:
            row["vs_default"] = default_ms / row["ms"]
    return rows


MIXED_SETTINGS = {"decodes with the chunk": AttentionTuning(decode_launch_min_seqs=0, fp8_decode_launch_min_seqs=0),
                  "decodes apart": AttentionTuning(decode_launch_min_seqs=1, fp8_decode_launch_min_seqs=1)}


def mixed_step(batch: int, context: int, chunk: int, g: Geometry, kv_dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, int]:
    """`batch` decodes over `context` cached tokens each, then one fresh prefill chunk of `chunk` tokens, over a
    cache whose blocks are scattered; returns (query, k_cache, v_cache, meta, bytes moved at least once)."""
    seq_lens = [context] * batch + [chunk]
    blocks = [math.ceil(length / g.block_size) for length in seq_lens]
    num_blocks = sum(blocks)
    shape = (num_blocks, g.block_size, g.kv_heads, g.head_dim)
    k_cache = to_cache_dtype(torch.randn(shape, dtype=g.dtype, device=device), kv_dtype)
    v_cache = to_cache_dtype(torch.randn(shape, dtype=g.dtype, device=device), kv_dtype)
    physical = torch.randperm(num_blocks, device=device).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=device)
    for i, start in enumerate(itertools.accumulate(blocks, initial=0)):
        if i < len(blocks):
            tables[i, :blocks[i]] = physical[start:start + blocks[i]]
    query_lens = [1] * batch + [chunk]
    meta = AttentionMetadata(
        slot_mapping=torch.full((batch + chunk,), -1, dtype=torch.long, device=device),
        query_start_loc=torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device), block_tables=tables,
        max_query_len=chunk, max_seq_len=max(seq_lens), query_lens_host=query_lens, seq_lens_host=seq_lens,
        num_decodes=batch)
    query = torch.randn(batch + chunk, g.heads, g.head_dim, dtype=g.dtype, device=device)
    moved = 2 * sum(seq_lens) * g.kv_heads * g.head_dim * kv_dtype.itemsize + 2 * query.numel() * g.dtype.itemsize
    return query, k_cache, v_cache, meta, moved


def measure_mixed(batch: int, context: int, kv_dtype: torch.dtype, g: Geometry, device: torch.device,
                  args: argparse.Namespace, copy_gb_s: float) -> list[dict]:
    """One mixed step, its decodes with the chunk and apart, each checked against the reference, then timed."""
    query, k_cache, v_cache, meta, moved = mixed_step(batch, context, args.mixed_chunk, g, kv_dtype, device)
    scale = g.head_dim**-0.5
    expected = reference.paged_attention(query.float(), k_cache.float(), v_cache.float(), meta, scale)
    rows = []
    for label, tuning in MIXED_SETTINGS.items():
        def call(tuning: AttentionTuning = tuning) -> torch.Tensor:
            with attention_tuning(tuning):
                return unified_attention(query, k_cache, v_cache, meta, scale)

        rows.append(checked_and_timed(call, expected, moved, device, args, copy_gb_s, path="mixed", kv_dtype=kv_dtype,
                                      batch=batch, context=context, setting=label))
    together = rows[0]["ms"]
    for row in rows:
        if together and row["ms"]:
            row["vs_default"] = together / row["ms"]
    return rows


def decode_launch_from(rows: list[dict]) -> dict[str, int | None]:
    """Per kv dtype and context, the fewest decodes from which their own launch beats the chunk's launch at every
    larger batch timed (None: it never does at the largest)."""
    times: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if row["path"] == "mixed" and row["ms"] is not None:
            times[f"{row['kv_dtype']} context {row['context']}"][row["batch"]][row["setting"]] = row["ms"]
    result: dict[str, int | None] = {}
    for key, by_batch in times.items():
        result[key] = None
        for batch in sorted(by_batch, reverse=True):
            pair = by_batch[batch]
            if len(pair) < 2 or pair["decodes apart"] >= pair["decodes with the chunk"]:
                break
            result[key] = batch
    return result


def recommend(rows: list[dict], decode_batches: list[int]) -> dict:
    """Per path the setting with the least worst slowdown against each shape's best (the 2D kernel's over the
    `decode_batches` it serves), and the split crossover."""
    shapes: dict[str, dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if row["ms"] is not None and row["path"] != "mixed":
            shapes[row["path"]][(row["kv_dtype"], row["batch"], row["context"])][row["setting"]] = row["ms"]
    result: dict = {}
    for path, all_shapes in shapes.items():
        by_shape = {shape: times for shape, times in all_shapes.items()
                    if path == "split" or shape[1] in decode_batches}
        if not by_shape:
            continue
        candidates = set.intersection(*(set(times) for times in by_shape.values()))
        if not candidates:
            continue
        worst = {s: max(times[s] / min(times.values()) for times in by_shape.values()) for s in candidates}
        best = min(worst, key=worst.__getitem__)
        result[path] = {"setting": best, "worst_slowdown": worst[best]}
    crossover: dict[str, int | None] = {}
    for (kv_dtype, batch, context), split_times in sorted(shapes.get("split", {}).items()):
        decode_times = next((shapes[p][(kv_dtype, batch, context)] for p in DECODE_PATHS
                             if (kv_dtype, batch, context) in shapes.get(p, {})), None)
        key = f"{kv_dtype} context {context}"
        if decode_times and min(split_times.values()) < min(decode_times.values()):
            crossover[key] = max(batch, crossover.get(key) or 0)
        else:
            crossover.setdefault(key, None)
    result["split_wins_up_to"] = crossover
    from_batch = decode_launch_from(rows)
    if from_batch:
        result["decode_launch_from"] = from_batch
    for field, fp8 in (("decode_launch_min_seqs", False), ("fp8_decode_launch_min_seqs", True)):
        batches = [b for key, b in from_batch.items() if key.startswith(FP8_NAME) == fp8]
        if batches:  # where a context's decodes never gain from their own launch, none of them is given one
            result[field] = 0 if None in batches else max(b for b in batches if b is not None)
    return result


def env_line(recommendation: dict, grid: list[Setting]) -> str:
    parts = []
    for path in (*DECODE_PATHS, "split"):
        label = recommendation.get(path, {}).get("setting")
        setting = next((s for s in grid if s.path == path and s.label == label), None)
        if setting is not None and setting.tuning.describe():
            parts.append(setting.tuning.describe())
    for field in ("decode_launch_min_seqs", "fp8_decode_launch_min_seqs"):
        min_seqs = recommendation.get(field)
        if min_seqs is not None and min_seqs != getattr(AttentionTuning(), field):
            parts.append(f"{field}={min_seqs}")
    described = ",".join(parts)
    return f'{ENV_VAR}="{described}"' if described else f"{ENV_VAR} unset: the defaults are best"


def run(args: argparse.Namespace, grid: list[Setting], device: torch.device, g: Geometry) -> tuple[list[dict], float]:
    copy_gb_s = copy_bandwidth_gb_s(device, args.iters)
    kv_dtypes = [resolve_kv_cache_dtype(name, g.dtype) for name in args.kv_cache_dtype]
    rows: list[dict] = []
    for kv_dtype, context in itertools.product(kv_dtypes, args.contexts):
        # the 2D kernel also at the split batches: the crossover compares the two there
        for batch in sorted(set(args.batch_sizes) | set(args.split_batch_sizes)):
            paths = [decode_path(kv_dtype), *(["split"] if batch in args.split_batch_sizes else [])]
            for path in paths:
                rows += measure_shape(path, batch, context, kv_dtype, grid, g, device, args, copy_gb_s)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for batch in args.mixed_batch_sizes:
            rows += measure_mixed(batch, context, kv_dtype, g, device, args, copy_gb_s)
    return rows, copy_gb_s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16, 32, 64, 128, 256],
                        help="decode batches the 2D kernel is timed on")
    parser.add_argument("--split-batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32, 64],
                        help="decode batches split-KV is timed on (the 2D kernel too, for the crossover)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 4096])
    parser.add_argument("--kv-cache-dtype", nargs="+", choices=["auto", "fp8"], default=None,
                        help="default: auto and fp8 on cuda, auto elsewhere")
    parser.add_argument("--decode-tile-n", type=int, nargs="+", default=[32, 64, 128],
                        help="of the 2D kernel on decodes, over either cache (16: 1.95x the best on an H200)")
    parser.add_argument("--num-warps", type=int, nargs="+", default=[4],
                        help="of the 2D kernel on decodes (8 was within 5%% of the best at 3 of 42 shapes on an "
                             "H200, and slower at the rest)")
    parser.add_argument("--num-stages", type=int, nargs="+", default=[2, 3], help="of the 2D kernel on decodes")
    parser.add_argument("--max-registers", type=int, nargs="+", default=[0, 128],
                        help="register caps of the 2D kernel on decodes (0: none)")
    parser.add_argument("--fp8-dot-fp16", type=int, nargs="+", choices=[0, 1], default=[0, 1],
                        help="FP8 decodes with their dot products in bf16 (0) and in fp16 (1)")
    parser.add_argument("--split-tile-n", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--split-num-warps", type=int, nargs="+", default=[4])
    parser.add_argument("--split-num-stages", type=int, nargs="+", default=[3])
    parser.add_argument("--segments", type=int, nargs="+", default=[8, 16, 32], help="split-KV segments (powers of 2)")
    parser.add_argument("--mixed-batch-sizes", type=int, nargs="*", default=[32, 128, 256],
                        help="decodes in the mixed steps timed (none: no mixed steps)")
    parser.add_argument("--mixed-chunk", type=int, default=512, help="prefill chunk tokens of a mixed step")
    parser.add_argument("--heads", type=int, default=16, help="query heads (Qwen3-ASR: 16)")
    parser.add_argument("--kv-heads", type=int, default=8, help="KV heads (Qwen3-ASR: 8)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", default=None, help="query dtype; default bfloat16 on cuda, else float32")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    add_output_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        grid = settings(args)
    except ValueError as error:
        raise SystemExit(f"tune-attention: {error}") from None
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.kv_cache_dtype is None:
        args.kv_cache_dtype = ["auto", "fp8"] if device.type == "cuda" else ["auto"]
    g = Geometry(args.heads, args.kv_heads, args.head_dim, args.block_size, dtype)
    rows, copy_gb_s = run(args, grid, device, g)
    recommendation = recommend(rows, args.batch_sizes)
    line = env_line(recommendation, grid)
    config = {name: getattr(args, name) for name in (
        "batch_sizes", "split_batch_sizes", "contexts", "kv_cache_dtype", "decode_tile_n", "num_warps", "num_stages",
        "max_registers", "fp8_dot_fp16", "split_tile_n", "split_num_warps", "split_num_stages", "segments",
        "mixed_batch_sizes", "mixed_chunk", "iters", "warmup")}
    config.update(heads=g.heads, kv_heads=g.kv_heads, head_dim=g.head_dim, block_size=g.block_size,
                  dtype=str(dtype), copy_gb_s=copy_gb_s, recommendation=recommendation, env=line)
    print_table(rows)
    for path in (*DECODE_PATHS, "split"):
        if path in recommendation:
            chosen = recommendation[path]
            print(f"{path}: {chosen['setting']} (at worst {chosen['worst_slowdown']:.2f}x the best of a shape)")
    print(f"split-KV beats the 2D kernel up to batch: {recommendation['split_wins_up_to']}")
    if "decode_launch_from" in recommendation:
        print(f"a mixed step's decodes gain from a launch of their own from: {recommendation['decode_launch_from']}")
    print(line)
    segments = next((s.segments for s in grid if s.label == recommendation.get("split", {}).get("setting")), None)
    if segments not in (None, SPLIT_KV_SEGMENTS):
        print(f"and SPLIT_KV_SEGMENTS = {segments} in kernels/attention_metadata.py (the workspace's size)")
    print(f"results: {write_results('tune-attention', device, config, rows, args.out_dir)}")
    return 0
