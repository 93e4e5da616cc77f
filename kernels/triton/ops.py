"""The Triton ModelOps. Importing this module decorates every kernel: do it once TRITON_INTERPRET is settled."""

from triton.runtime.interpreter import InterpretedFunction

from qasr.kernels.model_ops import ModelOps
from qasr.kernels.triton import activation, kv_store, norms, paged_attention, windowed_attention

TRITON_OPS = ModelOps(
    name="triton",
    store_kv=kv_store.store_kv,
    paged_attention=paged_attention.unified_attention,
    windowed_attention=windowed_attention.windowed_attention,
    add_rms_norm=norms.add_rms_norm,
    qk_norm_rope=norms.qk_norm_rope,
    qk_norm_rope_store=norms.qk_norm_rope_store,
    silu_and_mul=activation.silu_and_mul,
)


def kernels_are_interpreted() -> bool:
    """Whether the kernels were decorated under TRITON_INTERPRET=1 (Triton decides at decoration)."""
    return isinstance(kv_store._store_kv_kernel, InterpretedFunction)
