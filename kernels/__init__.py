from kernels.attention_metadata import AttentionMetadata
from kernels.dispatch import AttentionBackend, get_attention_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "get_attention_backend"]
