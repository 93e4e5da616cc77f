from kernels.attention_metadata import AttentionMetadata, SplitKVWorkspace
from kernels.dispatch import AttentionBackend, get_attention_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "SplitKVWorkspace", "get_attention_backend"]
