import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qasr.engine.model_config import AudioEncoderConfig
from qasr.kernels import ModelOps


def powers_of_two(n: int) -> list[int]:
    """n's binary digits as sizes, largest first (13 -> 8, 4, 1): parts of a batch in a few shapes. oneDNN, which
    runs the CPU's convolutions and GELUs, compiles and keeps a primitive, with its scratch memory, for every input
    shape it meets (up to 1024), and a server's batches bring new sizes all day."""
    return [1 << bit for bit in reversed(range(n.bit_length())) if n >> bit & 1]


def gelu_in_row_blocks(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU of x [rows, width]; on the CPU in place, over power-of-two blocks of rows (the encoder's row count,
    the tokens of a batch, is new nearly every batch). Elementwise: F.gelu's result to the bit."""
    if x.device.type != "cpu" or x.dim() != 2:
        return F.gelu(x)
    for block in x.split(powers_of_two(x.shape[0])):
        torch.ops.aten.gelu_(block)
    return x


# the encoder layers' and the projector's activation_function, as transformers' ACT2FN computes each (the
# convolution stem is always exact GELU)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu_in_row_blocks,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


# the conv stem's largest activation at once: on the CPU small enough to stay in cache (and a CPU process keeps the
# heap a peak grew); on a GPU large enough that the slices are few
CPU_CONV_SLICE_BYTES = 8 << 20
GPU_CONV_SLICE_BYTES = 512 << 20


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported audio encoder activation_function {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def conv_output_length(frames: int) -> int:
    for _ in range(3):
        frames = (frames - 1) // 2 + 1 if frames > 0 else 0
    return frames


def num_audio_tokens(frames: int, chunk_frames: int = 100) -> int:
    """Encoder outputs for a clip of `frames` mel frames: 13 per full chunk plus the partial tail."""
    return (frames // chunk_frames) * conv_output_length(chunk_frames) + conv_output_length(frames % chunk_frames)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2).float())
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class EncoderAttention(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.scale = self.head_dim**-0.5
        # the checkpoint's q_proj, k_proj and v_proj in one matrix (model.FUSED_PARAMETERS): one launch, not three
        self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor, window_lens: list[int], ops: ModelOps,
                starts: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).view(-1, 3, self.num_heads, self.head_dim).unbind(1)
        return self.out_proj(ops.windowed_attention(q, k, v, window_lens, self.scale, starts).flatten(1))


class EncoderLayer(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.self_attn = EncoderAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.activation = activation_function(config.activation)

    def forward(self, hidden: torch.Tensor, window_lens: list[int], ops: ModelOps,
                starts: torch.Tensor | None = None) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.self_attn_layer_norm(hidden), window_lens, ops, starts)
        hidden = hidden + self.fc2(self.activation(self.fc1(self.final_layer_norm(hidden))))
        if hidden.dtype == torch.float16:
            limit = torch.finfo(torch.float16).max - 1000
            hidden = hidden.clamp(-limit, limit)
        return hidden


class AudioEncoder(nn.Module):
    """Conv stem per 1 s chunk, per-chunk sinusoid positions, windowed bidirectional attention, projector.

    Many clips are encoded in one pass: their chunks are stacked for the convolutions and their tokens
    packed for the transformer layers, with attention windows that never cross a clip.
    """

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.num_mel_bins = config.num_mel_bins
        self.chunk_frames = 2 * config.n_window
        self.window_tokens = conv_output_length(self.chunk_frames) * (config.n_window_infer // self.chunk_frames)
        channels = config.conv_channels
        self.conv2d1 = nn.Conv2d(1, channels, 3, 2, padding=1)
        self.conv2d2 = nn.Conv2d(channels, channels, 3, 2, padding=1)
        self.conv2d3 = nn.Conv2d(channels, channels, 3, 2, padding=1)
        freq_after_conv = conv_output_length(config.num_mel_bins)
        self.conv_out = nn.Linear(channels * freq_after_conv, config.d_model, bias=False)
        self.register_buffer("positions", sinusoids(conv_output_length(self.chunk_frames), config.d_model),
                             persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.ln_post = nn.LayerNorm(config.d_model)
        self.proj1 = nn.Linear(config.d_model, config.d_model)
        self.proj2 = nn.Linear(config.d_model, config.output_dim)
        self.activation = activation_function(config.activation)

    def conv_stem(self, x: torch.Tensor) -> torch.Tensor:
        """[chunks, 1, mel, frames] -> [chunks, tokens, d_model], positions added."""
        x = F.gelu(self.conv2d1(x))
        x = F.gelu(self.conv2d2(x))
        x = F.gelu(self.conv2d3(x))
        num_chunks, channels, freq, time = x.shape
        x = self.conv_out(x.permute(0, 3, 1, 2).reshape(num_chunks, time, channels * freq))
        return x + self.positions[:time].to(x.dtype)

    def conv_slice_chunks(self, x: torch.Tensor) -> int:
        """The most chunks that go through the conv stem at once, a power of two: its first layer's output, the
        largest activation of an encoder pass, stays under the device's slice bytes (the chunks are independent:
        slicing changes nothing but float rounding, where a convolution picks another algorithm for another batch
        size)."""
        _, _, mel, frames = x.shape
        first_layer_bytes = self.conv2d1.out_channels * -(-mel // 2) * -(-frames // 2) * x.element_size()
        limit = GPU_CONV_SLICE_BYTES if x.device.type == "cuda" else CPU_CONV_SLICE_BYTES
        return 1 << (max(1, limit // first_layer_bytes).bit_length() - 1)

    def conv_slices(self, x: torch.Tensor) -> list[int]:
        """Slice sizes for `x`'s chunks: whole slices of conv_slice_chunks, then the rest in powers of two (a few
        shapes for oneDNN to compile, see powers_of_two)."""
        most = self.conv_slice_chunks(x)
        whole, rest = divmod(x.shape[0], most)
        return [most] * whole + powers_of_two(rest)

    def forward(self, mels: list[torch.Tensor], ops: ModelOps) -> torch.Tensor:
        """mels: [num_mel_bins, frames] per clip. Returns packed [sum of num_audio_tokens, output_dim]."""
        batch = self.prepare(mels)
        return self.run(batch.chunks, batch.keep, batch.window_lens, ops)

    def prepare(self, mels: list[torch.Tensor]) -> "EncoderBatch":
        """The host's part: the clips' 1 s chunks stacked, which of the conv stem's outputs are real, the windows."""
        chunks, valid_per_chunk, window_lens = [], [], []
        for mel in mels:
            frames = mel.shape[-1]
            num_chunks = math.ceil(frames / self.chunk_frames)
            padded = F.pad(mel, (0, num_chunks * self.chunk_frames - frames))
            chunks.append(padded.view(mel.shape[0], num_chunks, self.chunk_frames).transpose(0, 1))
            tails = [self.chunk_frames] * (num_chunks - 1) + [frames - (num_chunks - 1) * self.chunk_frames]
            valid_per_chunk += [conv_output_length(n) for n in tails]
            tokens = num_audio_tokens(frames, self.chunk_frames)
            window_lens += [self.window_tokens] * (tokens // self.window_tokens)
            if tokens % self.window_tokens:
                window_lens.append(tokens % self.window_tokens)
        x = torch.cat(chunks).unsqueeze(1).to(self.conv_out.weight.dtype)  # [chunks, 1, mel, 100]
        time = conv_output_length(self.chunk_frames)
        keep = torch.from_numpy(np.concatenate([chunk * time + np.arange(n)
                                                for chunk, n in enumerate(valid_per_chunk)]))
        if x.is_cuda:
            keep = keep.pin_memory().to(x.device, non_blocking=True)
        return EncoderBatch(x, keep, window_lens)

    def run(self, chunks: torch.Tensor, keep: torch.Tensor, window_lens: list[int], ops: ModelOps,
            starts: torch.Tensor | None = None) -> torch.Tensor:
        """The device's part: conv stem, the real positions kept, the layers, the projector. `starts`: the windows'
        bounds on the device (see windowed_attention), where a CUDA graph keeps them."""
        x = torch.cat([self.conv_stem(part) for part in chunks.split(self.conv_slices(chunks))])
        hidden = x.flatten(0, 1).index_select(0, keep)  # the valid positions of every chunk, in order
        for layer in self.layers:
            hidden = layer(hidden, window_lens, ops, starts)
        hidden = self.ln_post(hidden)
        return self.proj2(self.activation(self.proj1(hidden)))


@dataclass(slots=True)
class EncoderBatch:
    chunks: torch.Tensor  # [chunks, 1, num_mel_bins, chunk_frames] in the encoder's dtype
    keep: torch.Tensor  # [tokens] the conv stem's output rows (chunk * tokens a chunk + position) that are real
    window_lens: list[int]  # attention windows over the kept tokens, in order
