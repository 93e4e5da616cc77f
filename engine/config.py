from dataclasses import dataclass, fields
from typing import ClassVar

from qasr.config_flags import CliArgs, option

ATTENTION_BACKENDS = ("torch", "triton")
KV_CACHE_DTYPES = ("auto", "fp8")
CUDA_GRAPH_MODES = ("decode", "full")
# shorter pieces lose the context that makes a transcript; the model takes at most 20 minutes at once
MIN_PIECE_SECONDS, MAX_PIECE_SECONDS = 2.0, 1200.0


@dataclass(slots=True)
class EngineConfig(CliArgs):
    """Engine options: keyword arguments of `ASR`, and the same names with dashes are flags of `qasr serve` and
    `qasr transcribe`."""

    cli_title: ClassVar[str] = "engine"

    model: str | None = option(None, "local checkpoint folder (either layout) or Hugging Face id; none: the "
                                     "bundled demo model")
    aligner_model: str | None = option(None, "Qwen3-ForcedAligner checkpoint (folder or Hugging Face id) for word "
                                             "timestamps and sentence-sized subtitle cues; 'none': no word timing; "
                                             "default: the bundled demo aligner with the demo model, else none")
    max_cue_seconds: float = option(7.0, "with an aligner: longest subtitle cue, in seconds")
    max_cue_chars: int = option(84, "with an aligner: longest subtitle cue, in characters")
    device: str | None = option(None, "torch device; none: cuda if available, else cpu")
    # a torch.dtype works too, from Python
    dtype: str | None = option(None, "float32, bfloat16 or float16; none: bfloat16 on cuda, float32 elsewhere")
    attention_backend: str | None = option(None, "kernels for attention, norms, RoPE and SiLU; none: triton on "
                                                 "cuda, torch elsewhere", choices=ATTENTION_BACKENDS)
    max_num_seqs: int = option(256, "most sequences (audio pieces) in one step")
    max_num_batched_tokens: int = option(8192, "most tokens (prefill and decode) in one step")
    max_num_encoder_tokens: int | None = option(None, "most audio tokens encoded in one step; none: "
                                                      "max_num_batched_tokens")
    block_size: int = option(16, "tokens per KV cache block")
    kv_cache_dtype: str = option("auto", "auto: the model's dtype; fp8: float8 e4m3, unscaled, half the bytes "
                                         "per block", choices=KV_CACHE_DTYPES)
    num_kv_blocks: int | None = option(None, "KV cache blocks; none: what max_num_seqs pieces of max_piece_seconds "
                                             "with a default-length output hold, within the memory left")
    gpu_memory_utilization: float = option(0.9, "share of the GPU's memory the engine may take, KV cache included")
    cpu_kv_cache_gib: float = option(2.0, "most memory the KV cache may take on the CPU, in GiB (it becomes resident "
                                          "as blocks fill)")
    max_model_len: int | None = option(None, "longest sequence (prompt + output); none: the checkpoint's "
                                             "max_position_embeddings")
    max_piece_seconds: float = option(30.0, "long audio is split at its quietest points into pieces of at most "
                                            "this length (2 to 1200 s), decoded in parallel")
    enable_prefix_caching: bool = option(True, "reuse KV blocks of identical prompt prefixes (keyed by audio "
                                               "content)")
    enable_chunked_prefill: bool = option(True, "split long prefills across steps")
    enforce_eager: bool = option(False, "no CUDA graphs")
    cuda_graph_mode: str = option("decode", "decode: CUDA graphs replay pure-decode steps, steps with prefill chunks "
                                            "and the audio encoder run eagerly; full: those too, steps up to "
                                            "max_num_batched_tokens tokens and encoder passes of up to 64 1-s chunks "
                                            "(padded to ladders of sizes; more graph memory). CUDA graphs need a "
                                            "GPU and the triton backend, and are off with enforce_eager",
                                  choices=CUDA_GRAPH_MODES)
    cpu_threads: int | None = option(None, "torch threads of a model on the CPU; none: every core, except in servers "
                                           "(qasr serve, AsyncEngine), which leave one to HTTP and audio decoding")
    cpu_heap_reuse: bool = option(True, "on the CPU, freed tensors' memory stays on the heap for the next step "
                                        "instead of fresh pages faulting in (glibc thresholds 32/64 MiB, "
                                        "process-wide); servers still hand it back when idle")
    seed: int = option(0, "seed of sampling for requests without a seed of their own")
    stream_interval: int = option(1, "streamed requests get their text every this many tokens (after the first "
                                     "text, which goes out at once): 1 is every token; more sends fewer, longer "
                                     "deltas for less host work per step")

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and block_size must be positive")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be positive, got {self.stream_interval}")
        if self.max_cue_seconds <= 0 or self.max_cue_chars < 1:
            raise ValueError("max_cue_seconds and max_cue_chars must be positive")
        for name in ("cpu_threads", "max_num_encoder_tokens", "num_kv_blocks", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:  # none is the default; 0 is not a second spelling of it
                raise ValueError(f"{name} must be positive (or none for the default), got {value}")
        if self.cpu_kv_cache_gib <= 0:
            raise ValueError(f"cpu_kv_cache_gib must be positive, got {self.cpu_kv_cache_gib:g}")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {self.kv_cache_dtype!r}")
        if not MIN_PIECE_SECONDS <= self.max_piece_seconds <= MAX_PIECE_SECONDS:
            raise ValueError(f"max_piece_seconds must be in [{MIN_PIECE_SECONDS:g}, {MAX_PIECE_SECONDS:g}], got "
                             f"{self.max_piece_seconds:g}")

    @classmethod
    def from_options(cls, **options: object) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**options)  # type: ignore[arg-type]
