"""The audio encoder replayed from CUDA graphs, one for each of a ladder of padded 1 s chunk counts.

Run eagerly, an encoder pass costs the host a Python launch per kernel, about ten a layer; a step that takes in a
new request pays them on top of the decoder's (cuda_graph_mode="full" graphs the decoder, see mixed_graphs.py). What
varies between passes is data the kernels can read from buffers: the chunks (padded with zeros), which of the
conv stem's outputs are real (padded with row 0, whose copies no window covers), and the attention windows' bounds
(padded with empty windows, whose programs exit at once); the launch depends only on the padded chunk count. The
log-mel features, and passes of more chunks than the ladder holds (whose device work dwarfs their launches), run
eagerly. With capture off the same padded buffers run eagerly, which is how the padding is tested without a GPU.
"""

import numpy as np
import torch

from qasr.engine.audio_encoder import AudioEncoder, conv_output_length
from qasr.engine.cuda_graphs import capture_graphs, half_step_ladder, padded_size
from qasr.kernels import ModelOps


def chunk_count_ladder(max_chunks: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, ... up to max_chunks: a pass of 2 chunks or more pads by at most half its chunks."""
    return half_step_ladder(max_chunks, smallest=1)


class EncoderGraphs:
    """Encoder passes of up to max_chunks chunks (1 s of audio each, a clip's last one partial)."""

    def __init__(self, encoder: AudioEncoder, ops: ModelOps, max_chunks: int):
        if ops.name != "triton":  # the torch attention reads the windows' lengths on the host, every pass
            raise ValueError(f"graphs of the audio encoder need the triton backend, not {ops.name!r}")
        self.encoder = encoder
        self.ops = ops
        self.sizes = chunk_count_ladder(max_chunks)
        self.tokens_per_chunk = conv_output_length(encoder.chunk_frames)
        weight = encoder.conv_out.weight
        n = self.sizes[-1]
        self.chunks = torch.zeros(n, 1, encoder.num_mel_bins, encoder.chunk_frames, dtype=weight.dtype,
                                  device=weight.device)
        self.keep = torch.zeros(n * self.tokens_per_chunk, dtype=torch.long, device=weight.device)
        self.starts = torch.zeros(self.max_windows(n) + 1, dtype=torch.int32, device=weight.device)
        self.out = torch.zeros(n * self.tokens_per_chunk, encoder.proj2.out_features, dtype=weight.dtype,
                               device=weight.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def max_windows(self, chunks: int) -> int:
        """The most windows `chunks` chunks' tokens fall into: a window per full window_tokens, one more a clip."""
        return chunks + chunks * self.tokens_per_chunk // self.encoder.window_tokens

    def padded_size(self, chunks: int) -> int | None:
        return padded_size(self.sizes, chunks)

    def _forward(self, size: int, window_lens: list[int]) -> None:
        tokens = size * self.tokens_per_chunk
        starts = self.starts[:len(window_lens) + 1]
        self.out[:tokens] = self.encoder.run(self.chunks[:size], self.keep[:tokens], window_lens, self.ops, starts)

    def capture_window_lens(self, size: int) -> list[int]:
        """What the captured launch takes from window_lens: how many windows there can be, and the longest one's
        q-blocks (a window holds at most window_tokens, and at most the size's tokens)."""
        longest = min(self.encoder.window_tokens, size * self.tokens_per_chunk)
        return [longest] + [0] * (self.max_windows(size) - 1)

    def capture(self, pool: tuple[int, int] | None = None) -> None:
        self.graphs = capture_graphs(self.sizes, lambda size: self._forward(size, self.capture_window_lens(size)),
                                     pool)

    def encode(self, mels: list[torch.Tensor]) -> torch.Tensor:
        """AudioEncoder.forward's result: packed [tokens, output_dim]."""
        batch = self.encoder.prepare(mels)
        num_chunks, num_tokens = batch.chunks.shape[0], batch.keep.shape[0]
        size = self.padded_size(num_chunks)
        if size is None:
            return self.encoder.run(batch.chunks, batch.keep, batch.window_lens, self.ops)
        windows = self.max_windows(size)
        self.chunks[:num_chunks].copy_(batch.chunks)
        self.chunks[num_chunks:size].zero_()
        self.keep[:num_tokens].copy_(batch.keep)
        self.keep[num_tokens:size * self.tokens_per_chunk].zero_()
        # the windows' bounds, then empty windows at the end of the real tokens
        starts = np.full(windows + 1, num_tokens, dtype=np.int32)
        starts[:len(batch.window_lens) + 1] = np.cumsum([0, *batch.window_lens])
        host = torch.from_numpy(starts)
        self.starts[:windows + 1].copy_(host.pin_memory() if self.starts.is_cuda else host, non_blocking=True)
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()
        else:
            self._forward(size, batch.window_lens + [0] * (windows - len(batch.window_lens)))
        return self.out[:num_tokens].clone()  # the next pass writes the buffer; a piece's prefill may take steps
