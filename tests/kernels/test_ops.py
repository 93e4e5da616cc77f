"""Triton KV store, fused add + RMSNorm, q/k RMSNorm + RoPE and SiLU-and-mul against their torch references."""

import pytest
import torch

from qasr.engine.layers import RotaryEmbedding
from qasr.kernels.reference import activation as reference_activation
from qasr.kernels.reference import kv_store as reference_kv_store
from qasr.kernels.reference import norms as reference_norms
from qasr.kernels.triton import activation, kv_store, norms

DTYPES = [torch.float32, torch.float16]


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """fp32: reduction order only; fp16: the kernels round where the reference rounds, so within an ulp."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    tolerance = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[ours.dtype]
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


def randn(generator: torch.Generator, *shape: int, dtype: torch.dtype, mean: float = 0.0,
          std: float = 1.0, device: str = "cpu") -> torch.Tensor:
    return (torch.randn(*shape, generator=generator) * std + mean).to(dtype).to(device)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)  # a pure copy: bf16 is safe to interpret
@pytest.mark.parametrize("block_size", [8, 16])
def test_store_kv(block_size: int, dtype: torch.dtype, seed_of) -> None:
    generator = torch.Generator().manual_seed(seed_of(block_size, dtype))
    num_tokens, kv_heads, head_dim, num_blocks = 9, 3, 24, 5
    # v is a strided view of a fused qkv row, as in the model
    qkv = randn(generator, num_tokens, 2 * 4 * head_dim + 2 * kv_heads * head_dim, dtype=dtype)
    key = randn(generator, num_tokens, kv_heads, head_dim, dtype=dtype)
    value = qkv[:, -kv_heads * head_dim:].view(num_tokens, kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens]
    slots[[1, 6]] = -1  # padding tokens: not stored
    k_cache = randn(generator, num_blocks, block_size, kv_heads, head_dim, dtype=dtype)
    v_cache = randn(generator, num_blocks, block_size, kv_heads, head_dim, dtype=dtype)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    reference_kv_store.store_kv(key, value, k_expected, v_expected, slots)
    kv_store.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


def test_store_kv_into_views_of_one_cache_tensor() -> None:
    """The engine's caches are [2, layers, ...] slices; storing into layer 1 leaves layer 0 untouched."""
    generator = torch.Generator().manual_seed(1)
    cache = torch.zeros(2, 2, 4, 16, 2, 16)
    key, value = randn(generator, 3, 2, 16, dtype=torch.float32), randn(generator, 3, 2, 16, dtype=torch.float32)
    slots = torch.tensor([5, -1, 63])
    kv_store.store_kv(key, value, cache[0, 1], cache[1, 1], slots)
    assert torch.equal(cache[0, 1].view(-1, 2, 16)[[5, 63]], key[[0, 2]])
    assert torch.equal(cache[1, 1].view(-1, 2, 16)[[5, 63]], value[[0, 2]])
    assert not cache[:, 0].any() and cache[0, 1].count_nonzero() == 2 * 2 * 16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [48, 64])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm(with_residual: bool, hidden: int, dtype: torch.dtype, seed_of) -> None:
    generator = torch.Generator().manual_seed(seed_of(with_residual, hidden, dtype))
    x = randn(generator, 7, hidden, dtype=dtype, std=3.0)
    residual = randn(generator, 7, hidden, dtype=dtype, std=3.0) if with_residual else None
    weight = randn(generator, hidden, dtype=dtype, mean=1.0, std=0.1)
    normed, new_residual = norms.add_rms_norm(x, residual, weight, 1e-6)
    expected_normed, expected_residual = reference_norms.add_rms_norm(x, residual, weight, 1e-6)
    assert_close(normed, expected_normed)
    assert torch.equal(new_residual, expected_residual)  # one rounded add, exactly as torch does it


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", [(2, 2, 32), (4, 2, 16), (6, 2, 24)], ids=lambda h: f"{h[0]}q{h[1]}kv{h[2]}d")
def test_qk_norm_rope(heads: tuple[int, int, int], dtype: torch.dtype, seed_of) -> None:
    num_heads, num_kv_heads, head_dim = heads
    generator = torch.Generator().manual_seed(seed_of(heads, dtype))
    rotary = RotaryEmbedding(head_dim, 1e6, 4096)
    num_tokens = 6
    qkv = randn(generator, num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, std=2.0)
    q, k, _ = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k = q.view(num_tokens, num_heads, head_dim), k.view(num_tokens, num_kv_heads, head_dim)  # strided views
    positions = torch.cat([torch.tensor([0, 1, 4095]), torch.randint(0, 4096, (num_tokens - 3,), generator=generator)])
    q_weight = randn(generator, head_dim, dtype=dtype, mean=3.0, std=0.3)
    k_weight = randn(generator, head_dim, dtype=dtype, mean=3.0, std=0.3)
    args = (positions, q_weight, k_weight, 1e-6, *rotary.tables(4096))
    q_out, k_out = norms.qk_norm_rope(q, k, *args)
    q_expected, k_expected = reference_norms.qk_norm_rope(q, k, *args)
    assert_close(q_out, q_expected)
    assert_close(k_out, k_expected)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)  # torch alone: bf16 is exact here
def test_qk_norm_rope_reference_is_each_heads_norm_and_rope_apart(dtype: torch.dtype, seed_of) -> None:
    """The reference takes q's and k's heads in one tensor: each gets, to the bit, transformers' steps on it alone."""
    generator = torch.Generator().manual_seed(seed_of(dtype))
    num_tokens, num_heads, num_kv_heads, head_dim = 9, 4, 2, 32
    rotary = RotaryEmbedding(head_dim, 1e6, 4096)
    qkv = randn(generator, num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, std=2.0)
    q, k, _ = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q, k = q.view(num_tokens, num_heads, head_dim), k.view(num_tokens, num_kv_heads, head_dim)
    q_weight = randn(generator, head_dim, dtype=dtype, mean=3.0, std=0.3)
    k_weight = randn(generator, head_dim, dtype=dtype, mean=1.0, std=0.3)
    positions = torch.randint(0, 4096, (num_tokens,), generator=generator)
    cos_cache, sin_cache = rotary.tables(4096)
    q_out, k_out = reference_norms.qk_norm_rope(q, k, positions, q_weight, k_weight, 1e-6, cos_cache, sin_cache)
    cos, sin = (cache[positions].to(dtype).unsqueeze(1) for cache in (cos_cache, sin_cache))
    for out, x, weight in ((q_out, q, q_weight), (k_out, k, k_weight)):
        assert torch.equal(out, reference_norms.apply_rope(reference_norms.rms_norm(x, weight, 1e-6), cos, sin))


def fused_against_two_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: tuple, cache_shape: tuple,
                              cache_dtype: torch.dtype, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """qk_norm_rope_store against qk_norm_rope + store_kv, both Triton: the same arithmetic, so the same bits (an
    FP8 cache included: e4m3 rounding would magnify any difference). Returns the fused q and K cache."""
    caches = [torch.zeros(cache_shape, dtype=torch.float32, device=q.device).to(cache_dtype) for _ in range(4)]
    q_fused = norms.qk_norm_rope_store(q, k, v, *args, caches[0], caches[1], slots)
    q_apart, k_apart = norms.qk_norm_rope(q, k, *args)
    kv_store.store_kv(k_apart, v, caches[2], caches[3], slots)
    assert torch.equal(q_fused, q_apart)
    for fused, apart in zip(caches[:2], caches[2:]):
        assert torch.equal(fused.view(torch.uint8), apart.view(torch.uint8))
    return q_fused, caches[0]


@pytest.mark.parametrize("cache_dtype", ["auto", torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qk_norm_rope_store_is_the_two_ops_in_one_launch(dtype: torch.dtype, cache_dtype, seed_of) -> None:
    num_heads, num_kv_heads, head_dim, block_size, num_tokens = 4, 2, 16, 8, 7
    generator = torch.Generator().manual_seed(seed_of(dtype, cache_dtype))
    rotary = RotaryEmbedding(head_dim, 1e6, 4096)
    qkv = randn(generator, num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, std=2.0)
    q, k, v = (part.view(num_tokens, -1, head_dim) for part in qkv.split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1))  # strided views
    args = (torch.randint(0, 4096, (num_tokens,), generator=generator),
            randn(generator, head_dim, dtype=dtype, mean=3.0, std=0.3),
            randn(generator, head_dim, dtype=dtype, mean=3.0, std=0.3), 1e-6, *rotary.tables(4096))
    slots = torch.randperm(4 * block_size, generator=generator)[:num_tokens]
    slots[[2, 5]] = -1  # padding tokens: not stored
    shape = (4, block_size, num_kv_heads, head_dim)
    q_out, k_cache = fused_against_two_kernels(q, k, v, args, shape, dtype if cache_dtype == "auto" else cache_dtype,
                                               slots)
    if cache_dtype == "auto":  # and against the torch reference of both, within the kernels' rounding
        k_expected, v_expected = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        assert_close(q_out, reference_norms.qk_norm_rope_store(q, k, v, *args, k_expected, v_expected, slots))
        assert_close(k_cache, k_expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("intermediate", [40, 1500])  # 1500: several column programs per row
def test_silu_and_mul(intermediate: int, dtype: torch.dtype, seed_of) -> None:
    generator = torch.Generator().manual_seed(seed_of(intermediate, dtype))
    gate_up = randn(generator, 3, 2 * intermediate, dtype=dtype, std=3.0)
    assert_close(activation.silu_and_mul(gate_up), reference_activation.silu_and_mul(gate_up))


def test_empty_inputs() -> None:
    weight = torch.ones(16)
    normed, residual = norms.add_rms_norm(torch.empty(0, 16), torch.empty(0, 16), weight, 1e-6)
    assert normed.shape == residual.shape == (0, 16)
    assert activation.silu_and_mul(torch.empty(0, 8)).shape == (0, 4)
    kv_store.store_kv(torch.empty(0, 2, 16), torch.empty(0, 2, 16), torch.zeros(1, 8, 2, 16),
                      torch.zeros(1, 8, 2, 16), torch.empty(0, dtype=torch.int64))


def rope_term_size(x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, eps: float,
                   cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> torch.Tensor:
    """|normed * cos| + |rotate_half(normed) * sin| per element, in fp32: the size of RoPE's two products."""
    normed = reference_norms.rms_norm(x, weight, eps).float()
    cos, sin = (cache[positions].unsqueeze(1).abs() for cache in (cos_cache, sin_cache))
    return normed.abs() * cos + reference_norms.rotate_half(normed).abs() * sin


def assert_rope_close(ours: torch.Tensor, theirs: torch.Tensor, term_size: torch.Tensor) -> None:
    """Within 4 bf16 ulps of the products' size rather than of the result's. On a GPU the kernel's sum of squares
    runs in another order and its rsqrt is the hardware's, so a normed value can round one ulp away from torch's; RoPE
    then subtracts two products, and that ulp of a product survives where they nearly cancel (seen on an H200: 88
    of 614,400 elements beyond 8e-3 of the result, the largest 0.031). A wrong position, sign or rotation is off by
    the products' own size."""
    error = (ours.float() - theirs.float()).abs()
    bound = 2.0**-5 * term_size
    assert bool((error <= bound).all()), f"{int((error > bound).sum())} elements beyond 4 ulps of RoPE's products"


def test_rope_tolerance_takes_rounding_but_not_a_wrong_position() -> None:
    generator = torch.Generator().manual_seed(3)
    rotary = RotaryEmbedding(32, 1e6, 4096)
    x = randn(generator, 50, 4, 32, dtype=torch.bfloat16, std=2.0)
    weight = randn(generator, 32, dtype=torch.bfloat16, mean=3.0, std=0.3)
    positions = torch.randint(1, 4096, (50,), generator=generator)
    cos_cache, sin_cache = rotary.tables(4096)
    size = rope_term_size(x, weight, positions, 1e-6, cos_cache, sin_cache)
    expected = reference_norms.qk_norm_rope(x, x[:, :1], positions, weight, weight, 1e-6, cos_cache, sin_cache)[0]
    one_ulp_off = expected.view(torch.int16).add(1).view(torch.bfloat16)
    assert_rope_close(one_ulp_off, expected, size)
    off_by_one = reference_norms.qk_norm_rope(x, x[:, :1], positions - 1, weight, weight, 1e-6, cos_cache,
                                              sin_cache)[0]
    with pytest.raises(AssertionError, match="beyond 4 ulps"):
        assert_rope_close(off_by_one, expected, size)


@pytest.mark.gpu
def test_qwen_shapes_bf16_on_gpu() -> None:
    """Qwen3-ASR 1.7B geometry in bf16: hidden 2048, 16 q / 8 kv heads of 128, intermediate 6144."""
    generator = torch.Generator().manual_seed(0)
    tokens, dtype = 300, torch.bfloat16
    x = randn(generator, tokens, 2048, dtype=dtype, device="cuda")
    residual = randn(generator, tokens, 2048, dtype=dtype, device="cuda")
    weight = randn(generator, 2048, dtype=dtype, mean=1.0, std=0.1, device="cuda")
    for ours, theirs in zip(norms.add_rms_norm(x, residual, weight, 1e-6),
                            reference_norms.add_rms_norm(x, residual, weight, 1e-6)):
        assert_close(ours, theirs)
    rotary = RotaryEmbedding(128, 1e6, 65536).cuda()
    qkv = randn(generator, tokens, (16 + 2 * 8) * 128, dtype=dtype, device="cuda")
    q, k, _ = qkv.split([2048, 1024, 1024], dim=-1)
    q, k = q.view(tokens, 16, 128), k.view(tokens, 8, 128)
    args = (torch.randint(0, 65536, (tokens,), generator=generator).cuda(),
            randn(generator, 128, dtype=dtype, mean=3.0, std=0.3, device="cuda"),
            randn(generator, 128, dtype=dtype, mean=3.0, std=0.3, device="cuda"), 1e-6, *rotary.tables(65536))
    for ours, theirs, x, weight in zip(norms.qk_norm_rope(q, k, *args), reference_norms.qk_norm_rope(q, k, *args),
                                       (q, k), args[1:3]):
        assert_rope_close(ours, theirs, rope_term_size(x, weight, args[0], *args[3:]))
    value = qkv[:, 3072:].view(tokens, 8, 128)
    slots = torch.randperm(64 * 16, generator=generator)[:tokens]
    slots[[3, 200]] = -1  # padding tokens: not stored
    slots = slots.cuda()
    for cache_dtype in (dtype, torch.float8_e4m3fn):
        fused_against_two_kernels(q, k, value, args, (64, 16, 8, 128), cache_dtype, slots)
    gate_up = randn(generator, tokens, 2 * 6144, dtype=dtype, device="cuda")
    assert_close(activation.silu_and_mul(gate_up), reference_activation.silu_and_mul(gate_up))
    key, value = (randn(generator, tokens, 8, 128, dtype=dtype, device="cuda") for _ in range(2))
    caches = [torch.zeros(64, 16, 8, 128, dtype=dtype, device="cuda") for _ in range(4)]
    slots = torch.randperm(64 * 16, generator=generator)[:tokens].cuda()
    kv_store.store_kv(key, value, caches[0], caches[1], slots)
    reference_kv_store.store_kv(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_rope_tables_grow_as_asked_and_hold_the_rows_a_full_table_holds() -> None:
    rotary = RotaryEmbedding(48, 1e6, 20000)
    assert rotary.cos.shape == (RotaryEmbedding.INITIAL_POSITIONS, 48)
    cos, sin = rotary.tables(100)
    assert cos is rotary.cos and cos.shape[0] == RotaryEmbedding.INITIAL_POSITIONS  # nothing to grow
    assert rotary.tables(5000)[0].shape[0] == 8192  # doubled
    assert rotary.tables(17000)[0].shape[0] == 17000  # past a doubling: what was asked
    assert rotary.tables(30000)[0].shape[0] == 20000  # never past max_positions
    theta, inv_freq = 1e6, rotary.inv_freq
    freqs = torch.arange(20000).float()[:, None] * (1.0 / theta ** (torch.arange(0, 48, 2).float() / 48))[None, :]
    torch.testing.assert_close(inv_freq, 1.0 / theta ** (torch.arange(0, 48, 2).float() / 48), rtol=0, atol=0)
    assert torch.equal(rotary.cos, torch.cat((freqs, freqs), -1).cos())
    assert torch.equal(rotary.sin, torch.cat((freqs, freqs), -1).sin())
    assert rotary.cos.dtype == torch.float32 and not rotary.state_dict()  # tables are not weights
