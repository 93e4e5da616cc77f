from dataclasses import dataclass, fields


@dataclass(slots=True)
class EngineConfig:
    """Engine options; the same names, with dashes, are flags of `qasr serve` and `qasr transcribe`."""

    model: str | None = None  # local checkpoint folder or Hugging Face id; None = the bundled demo model
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # "bfloat16", "float16", "float32" or a torch.dtype; None: bf16 on cuda, else fp32
    attention_backend: str | None = None  # "torch" | "triton"; None: triton on cuda, torch elsewhere
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_num_encoder_tokens: int | None = None  # audio tokens encoded per step; None = max_num_batched_tokens
    block_size: int = 16
    kv_cache_dtype: str = "auto"  # "auto" = the model dtype; "fp8" = float8 e4m3, unscaled, half the bytes per block
    num_kv_blocks: int | None = None  # None: sized from memory
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 2.0
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    max_piece_seconds: float = 30.0  # long audio is split into pieces of at most this length
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and block_size must be positive")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.kv_cache_dtype not in ("auto", "fp8"):
            raise ValueError(f"kv_cache_dtype must be 'auto' or 'fp8', not {self.kv_cache_dtype!r}")
        if not 0.0 < self.max_piece_seconds <= 1200.0:
            raise ValueError("max_piece_seconds must be in (0, 1200]")

    @classmethod
    def from_options(cls, **options: object) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**options)  # type: ignore[arg-type]
