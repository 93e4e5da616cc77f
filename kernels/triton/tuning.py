"""Launch parameters of the decoder's paged attention kernels: one set per process.

The defaults are what `qasr bench tune-attention` found on an H200 (2026-12-04,
benchmarks/results/tune-attention-cuda-2026-12-04-h200-grid.json): the 2D decode kernel at 64 keys a tile with
Triton's default 4 warps and 3 stages was within 1.05x of the best of 12 settings at every shape timed (batches
1-256, contexts 512-4096, bf16 and FP8 caches; 16 keys a tile, the old default, 1.95x the best at the median), and
the split-KV kernels at 32 keys a tile within 1.2x. On another GPU, time the choices and set the best ones
without a code change:

    QASR_ATTENTION_TUNING="decode_tile_n=32,decode_num_warps=8" qasr serve ...

The 2D kernel's decode settings come twice, for a cache in the model's dtype and for an FP8 one (`fp8_decode_*`):
an FP8 tile holds half the bytes, and the kernel's registers differ. Each tile width must be a power of two of at
least 16 (tl.dot's smallest side). The split-KV path's segment count is not here: it sizes the workspace the
decode graphs hold (attention_metadata.SPLIT_KV_SEGMENTS).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

ENV_VAR = "QASR_ATTENTION_TUNING"
WARP_COUNTS = (1, 2, 4, 8, 16)
MIN_REGISTERS, MAX_REGISTERS = 24, 255  # a thread's register cap that ptxas accepts (sm_70+)


@dataclass(frozen=True, slots=True)
class LaunchSettings:
    """One launch of an attention kernel: keys per tile, warps, pipelining depth of the key loop, and the most
    registers a thread may hold (Triton's maxnreg; 0: the compiler's choice)."""
    tile_n: int
    num_warps: int
    num_stages: int
    max_registers: int = 0

    def compile_options(self) -> dict[str, int]:
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        return options | ({"maxnreg": self.max_registers} if self.max_registers else {})


@dataclass(frozen=True, slots=True)
class AttentionTuning:
    # the 2D kernel on a pure-decode batch: keys per tile, warps, software pipelining depth of the key loop (the
    # warps and stages are Triton's defaults), and a cap on a thread's registers (0: none)
    decode_tile_n: int = 64
    decode_num_warps: int = 4
    decode_num_stages: int = 3
    decode_max_registers: int = 0
    # the same over an FP8 cache (the defaults as for bf16, timed by the H200 grid). Untimed candidates, in `make
    # gpu-check` part 1: the grid's times followed the bytes an SM had in flight (bf16: 24 KB 1.7 TB/s, 64 KB 3.8,
    # 128 KB 4.35), and Triton 3.6 gives the FP8 kernel at 64 keys 194 registers a thread, 2 programs of 16 KB an
    # SM (bf16: 4 of 32 KB); at 128 keys it takes 168 without spills (3 programs of 32 KB), and capped at 128
    # registers 4 programs with a small spill (a stack of 48-264 bytes, Triton 3.6-3.9)
    fp8_decode_tile_n: int = 64
    fp8_decode_num_warps: int = 4
    fp8_decode_num_stages: int = 3
    fp8_decode_max_registers: int = 0
    # the 2D kernel on a batch with prefill chunks
    prefill_tile_n: int = 32
    prefill_num_warps: int = 4
    prefill_num_stages: int = 3
    # the split-KV segment kernel (small pure-decode batches)
    split_tile_n: int = 32
    split_num_warps: int = 4
    split_num_stages: int = 3
    # a step mixing decodes with prefill chunks attends its leading decodes in a launch of their own, with the
    # decode settings, from this many on (fewer ride in the prefill launch: a launch more per layer costs host time
    # that small steps cannot spare); 0: never. On the H200 their own launch was faster from 256 decodes at every
    # context timed (from 128 at 1k keys, from 32 at 4k or with an FP8 cache; 0.68x at 32 decodes of 512 keys)
    decode_launch_min_seqs: int = 256
    # the same over an FP8 cache, whose decodes the prefill launch's tiles suit worse: there their own launch took
    # 25-40% less of the H200's time from 128 decodes at every context timed (at 32, less than a launch's host time)
    fp8_decode_launch_min_seqs: int = 128
    # 1: over an FP8 cache, the decode and prefill kernels take their dot products in fp16 (the query converted
    # once a program, each e4m3 tile to fp16: one conversion instruction per two values on sm_89+; bf16 dots take
    # one more per value: at the CUDA guide's 16 conversions a cycle an SM, 384 a key and KV head would cap the FP8
    # decode near 1.3x the bf16 kernel's best speed, fp16 dots' 128 far above it). fp16 holds every e4m3 value
    # exactly, and the queries, normalised by q_norm, lie well inside its range. Not yet timed on a GPU: off by
    # default
    fp8_dot_fp16: int = 0

    def __post_init__(self) -> None:
        for name in ("decode_tile_n", "fp8_decode_tile_n", "prefill_tile_n", "split_tile_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two of at least 16, got {value}")
        for name in ("decode_num_warps", "fp8_decode_num_warps", "prefill_num_warps", "split_num_warps"):
            if getattr(self, name) not in WARP_COUNTS:
                raise ValueError(f"{name} must be one of {WARP_COUNTS}, got {getattr(self, name)}")
        for name in ("decode_num_stages", "fp8_decode_num_stages", "prefill_num_stages", "split_num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("decode_max_registers", "fp8_decode_max_registers"):
            value = getattr(self, name)
            if value and not MIN_REGISTERS <= value <= MAX_REGISTERS:
                raise ValueError(f"{name} must be 0 (no cap) or {MIN_REGISTERS}-{MAX_REGISTERS}, got {value}")
        if self.fp8_dot_fp16 not in (0, 1):
            raise ValueError(f"fp8_dot_fp16 must be 0 or 1, got {self.fp8_dot_fp16}")
        for name in ("decode_launch_min_seqs", "fp8_decode_launch_min_seqs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (never) or more, got {getattr(self, name)}")

    def decode(self, fp8_cache: bool) -> LaunchSettings:
        """The 2D kernel's settings on decodes (a pure-decode batch, or a mixed step's decodes in their own launch)."""
        if fp8_cache:
            return LaunchSettings(self.fp8_decode_tile_n, self.fp8_decode_num_warps, self.fp8_decode_num_stages,
                                  self.fp8_decode_max_registers)
        return LaunchSettings(self.decode_tile_n, self.decode_num_warps, self.decode_num_stages,
                              self.decode_max_registers)

    def decode_launch_min_seqs_for(self, fp8_cache: bool) -> int:
        """From how many decodes a mixed step attends them in a launch of their own (0: never)."""
        return self.fp8_decode_launch_min_seqs if fp8_cache else self.decode_launch_min_seqs

    def prefill(self) -> LaunchSettings:
        return LaunchSettings(self.prefill_tile_n, self.prefill_num_warps, self.prefill_num_stages)

    def split(self) -> LaunchSettings:
        return LaunchSettings(self.split_tile_n, self.split_num_warps, self.split_num_stages)

    @classmethod
    def parse(cls, text: str) -> "AttentionTuning":
        """From `name=value,name=value` (what `describe` gives); empty: the defaults."""
        known = {field.name for field in fields(cls)}
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in known or not value.strip().isdigit():
                raise ValueError(f"{ENV_VAR}: {item!r} is not name=number for a name of {', '.join(sorted(known))}")
            values[name] = int(value)
        return cls(**values)

    def describe(self) -> str:
        """The settings that differ from the defaults, as `parse` reads them ("" for the defaults)."""
        default = AttentionTuning()
        return ",".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self)
                        if getattr(self, field.name) != getattr(default, field.name))


_current = AttentionTuning.parse(os.environ.get(ENV_VAR, ""))


def current_tuning() -> AttentionTuning:
    return _current


@contextmanager
def attention_tuning(tuning: AttentionTuning) -> Iterator[None]:
    """Launches in the block use `tuning` (the tuner tries each in turn); the previous set comes back after."""
    global _current
    previous, _current = _current, tuning
    try:
        yield
    finally:
        _current = previous
