"""The plain-torch ModelOps."""

from qasr.kernels.model_ops import ModelOps
from qasr.kernels.reference import activation, kv_store, norms, paged_attention, windowed_attention

TORCH_OPS = ModelOps(
    name="torch",
    store_kv=kv_store.store_kv,
    paged_attention=paged_attention.paged_attention,
    windowed_attention=windowed_attention.windowed_attention,
    add_rms_norm=norms.add_rms_norm,
    qk_norm_rope=norms.qk_norm_rope,
    qk_norm_rope_store=norms.qk_norm_rope_store,
    silu_and_mul=activation.silu_and_mul,
)
