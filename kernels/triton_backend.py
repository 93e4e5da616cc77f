"""The Triton backend: every model op as a Triton kernel. Import only once TRITON_INTERPRET is settled."""

from triton.runtime.interpreter import InterpretedFunction

from kernels import activation, fused_norms, kv_store, packed_window_attention, unified_attention
from kernels.dispatch import AttentionBackend

TRITON_BACKEND = AttentionBackend(
    name="triton",
    store_kv=kv_store.store_kv,
    paged_attention=unified_attention.unified_attention,
    windowed_attention=packed_window_attention.windowed_attention,
    add_rms_norm=fused_norms.add_rms_norm,
    qk_norm_rope=fused_norms.qk_norm_rope,
    silu_and_mul=activation.silu_and_mul,
)


def kernels_are_interpreted() -> bool:
    """Triton picks the interpreter when a kernel is decorated, i.e. when its module is first imported."""
    return isinstance(kv_store._store_kv_kernel, InterpretedFunction)
