"""The decoder's and encoder's compute: plain-torch references (reference/) and Triton kernels (triton/) behind one
ModelOps interface. Knows tensors and attention metadata, nothing of requests."""

from qasr.kernels.attention_metadata import AttentionMetadata, SplitKVWorkspace
from qasr.kernels.model_ops import ModelOps, get_model_ops

__all__ = ["AttentionMetadata", "ModelOps", "SplitKVWorkspace", "get_model_ops"]
