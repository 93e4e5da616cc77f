"""What the CUDA-graph sets share (decode_graphs, mixed_graphs, encoder_graphs): capturing a ladder of sizes, and
the ladders' sizes."""

from collections.abc import Callable

import torch


@torch.inference_mode()
def capture_graphs(sizes: list[int], forward: Callable[[int], None],
                   pool: tuple[int, int] | None = None) -> dict[int, torch.cuda.CUDAGraph]:
    """A CUDA graph of forward(size) for every size, largest first, in one memory pool, `pool` if given (the graphs
    replay one at a time, on one stream, and keep what outlives a replay in buffers of their own)."""
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the cache and buffers are zero-filled on the default stream
    for size in sorted(sizes, reverse=True):
        with torch.cuda.stream(stream):
            forward(size)  # warm-up: compiles kernels outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            forward(size)
        pool = graph.pool()
        graphs[size] = graph
    torch.cuda.synchronize()
    return graphs


def half_step_ladder(largest: int, smallest: int) -> list[int]:
    """Powers of two from `smallest` and the sizes halfway between (16, 24, 32, 48, ...) up to `largest`, which ends
    it: a size of `smallest` or more pads by at most half."""
    sizes, size = [], smallest
    while size < largest:
        sizes += sorted(s for s in {size, size * 3 // 2} if s < largest)  # a set: 1's halfway is 1
        size *= 2
    return sizes + [largest]


def padded_size(sizes: list[int], n: int) -> int | None:
    """The smallest of the ascending `sizes` that holds n; None if none does."""
    return next((size for size in sizes if size >= n), None)
