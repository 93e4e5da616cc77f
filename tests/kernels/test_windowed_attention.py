"""Triton encoder attention over packed variable-length windows against the torch reference."""

import pytest
import torch

from qasr.kernels.reference import windowed_attention as reference
from qasr.kernels.triton import windowed_attention

TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture
def check(seed_of):
    """`check(window_lens, num_heads, head_dim, dtype, device="cpu", fused_qkv=False)`: random q, k, v through
    the kernel and the reference, which must agree within TOLERANCE."""

    def check(window_lens: list[int], num_heads: int, head_dim: int, dtype: torch.dtype, device: str = "cpu",
              fused_qkv: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed_of(window_lens, num_heads, head_dim, dtype, fused_qkv))
        tokens = sum(window_lens)
        if fused_qkv:  # strided views of one projection output
            qkv = torch.randn(tokens, 3 * num_heads * head_dim, generator=generator).to(dtype).to(device)
            q, k, v = (t.view(tokens, num_heads, head_dim) for t in qkv.chunk(3, dim=-1))
        else:
            q, k, v = (torch.randn(tokens, num_heads, head_dim, generator=generator).to(dtype).to(device)
                       for _ in range(3))
        scale = head_dim**-0.5
        out = windowed_attention.windowed_attention(q, k, v, window_lens, scale)
        expected = reference.windowed_attention(q.float(), k.float(), v.float(), window_lens, scale)
        assert out.dtype == dtype and out.shape == q.shape
        error = (out.float() - expected).abs().max().item()
        assert error <= TOLERANCE[dtype], f"max abs error {error}"

    return check


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [12, 16, 64])  # 12: the gqa3 test encoder, padded to 16
def test_windowed_attention(head_dim: int, dtype: torch.dtype, check) -> None:
    check([5, 13, 1, 104, 40, 104], num_heads=2, head_dim=head_dim, dtype=dtype)


def test_bf16_computes_in_fp32_under_the_interpreter(check) -> None:
    check([30, 104], num_heads=2, head_dim=16, dtype=torch.bfloat16)


def test_windowed_attention_on_strided_views(check) -> None:
    check([104, 17], num_heads=3, head_dim=16, dtype=torch.float32, fused_qkv=True)


def test_window_lengths_must_cover_the_tokens() -> None:
    q = torch.zeros(10, 2, 16)
    with pytest.raises(ValueError, match="windows cover 9 tokens"):
        windowed_attention.windowed_attention(q, q, q, [4, 5], 0.25)


def test_bounds_from_a_device_buffer_with_padding_and_empty_windows() -> None:
    """What the encoder's CUDA graphs pass: the bounds from a buffer of their own, tokens past the last window
    (padding, left unwritten) and empty windows after it; the windows' rows as without the padding."""
    generator = torch.Generator().manual_seed(4)
    lens, padded_tokens = [7, 13, 2], 30
    q, k, v = (torch.randn(padded_tokens, 2, 16, generator=generator) for _ in range(3))
    starts = torch.tensor([0, 7, 20, 22, 22, 22], dtype=torch.int32)  # two empty windows at the end
    out = windowed_attention.windowed_attention(q, k, v, lens + [0, 0], 0.25, starts)
    expected = reference.windowed_attention(q[:22], k[:22], v[:22], lens, 0.25)
    torch.testing.assert_close(out[:22], expected, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="windows cover 31 tokens"):
        windowed_attention.windowed_attention(q, k, v, [31], 0.25, torch.tensor([0, 31], dtype=torch.int32))
    with pytest.raises(ValueError, match="3 windows need one more"):
        windowed_attention.windowed_attention(q, k, v, lens, 0.25, starts[:3])


@pytest.mark.gpu
def test_encoder_shapes_bf16_on_gpu(check) -> None:
    """Qwen3-ASR encoder geometry: 16 heads of 64, 104-token windows of many clips of mixed lengths."""
    check([104] * 40 + [13, 52, 1, 99] * 5, num_heads=16, head_dim=64, dtype=torch.bfloat16, device="cuda")
