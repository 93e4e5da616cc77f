from dataclasses import dataclass, field

# temperatures below this are greedy (vLLM's threshold): logits divided by less would overflow float32
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 512
    seed: int | None = None
    ignore_eos: bool = False
    # temperature below GREEDY_BELOW_TEMPERATURE: argmax. Stored, as the runner reads it for every row every step
    greedy: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # written as `not (ok)` so that NaN fails too
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        object.__setattr__(self, "greedy", self.temperature < GREEDY_BELOW_TEMPERATURE)
