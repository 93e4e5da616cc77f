from pathlib import Path

import torch

from qasr.engine.checkpoint import load_weights
from qasr.engine.model import Qwen3ASRModel
from qasr.engine.model_config import ModelConfig

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """None: cuda if available, else cpu. A CUDA device always gets its index: torch.cuda.set_device refuses a bare
    "cuda"."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a torch device: {error}") from error
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None or "auto": bfloat16 on CUDA, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def load_model(path: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> Qwen3ASRModel:
    """The checkpoint's model on `device` in `dtype`, ready for inference. Parameters are created directly in the
    target dtype on the device; float32 buffers (RoPE, positions) stay float32, built with explicit dtypes."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ASRModel(config)
    finally:
        torch.set_default_dtype(previous)
    model.load_weights(load_weights(path, config, dtype))
    return model.eval()
