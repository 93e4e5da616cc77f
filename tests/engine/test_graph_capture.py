"""What the CUDA graphs capture never reads the device's data on the host.

Such a read (.item(), .tolist(), bool() of a tensor, nonzero, a boolean mask's gather, a copy to the CPU, a tensor
made from host data) makes a capture fail, or bakes in the value the capture saw. A GPU finds that out at capture
time, and GPU time is scarce; here, without one, the forward each graph set captures runs eagerly at every size of
its ladder, as capture_graphs runs it, under a torch function mode that records such calls. The Triton interpreter's
own copies of a kernel's arguments to the host, which a compiled launch does not make, are left out.
"""

import sys
from pathlib import Path

import pytest
import torch
import triton
from torch.overrides import TorchFunctionMode

from qasr.engine import ASR
from qasr.engine.decode_graphs import DecodeGraphs
from qasr.engine.encoder_graphs import EncoderGraphs
from qasr.engine.mixed_graphs import MixedStepGraphs

Tensor = torch.Tensor
HOST_READS = {
    Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__,
    Tensor.__complex__, Tensor.nonzero, torch.nonzero, Tensor.argwhere, torch.argwhere, Tensor.cpu, Tensor.numpy,
    Tensor.masked_select, torch.masked_select, Tensor.unique, torch.unique, Tensor.unique_consecutive,
    torch.unique_consecutive, Tensor.equal, torch.equal, Tensor.allclose, torch.allclose,
    torch.tensor, torch.as_tensor, torch.from_numpy,
}
TRITON_PACKAGE = str(Path(triton.__file__).parent)


class HostReads(TorchFunctionMode):
    """Records the calls (name and caller) that read a tensor's data on the host or make one from host data."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_on_host(func, args, kwargs):
            caller = sys._getframe(1)
            if not in_triton(caller):
                self.calls.append(f"{getattr(func, '__qualname__', func)} at {caller.f_code.co_filename}:"
                                  f"{caller.f_lineno}")
        return func(*args, **kwargs)


def reads_on_host(func, args: tuple, kwargs: dict) -> bool:
    if func in HOST_READS:
        return True
    if func is Tensor.__getitem__:  # a boolean mask's gather: its size is the mask's count of True
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in index)
    if func in (Tensor.repeat_interleave, torch.repeat_interleave):  # the output's size, unless given
        return isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), Tensor) and "output_size" not in kwargs
    if func is Tensor.to:  # to the CPU
        return any(torch.device(a).type == "cpu" for a in [*args[1:], kwargs.get("device")]
                   if isinstance(a, (str, torch.device)))
    return False


def in_triton(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith(TRITON_PACKAGE):
            return True
        frame = frame.f_back
    return False


@pytest.fixture(scope="module")
def runner(checkpoint_root: Path, shapes, write_checkpoint):
    checkpoint = write_checkpoint(checkpoint_root / "graph-capture", shapes[1], layout="hf", seed=11)
    runner = ASR(str(checkpoint), attention_backend="triton", max_num_seqs=4, num_kv_blocks=8).engine.core.runner
    runner.model.model.rotary.tables(256)  # as the engine does on a GPU before capturing: the tables never grow
    return runner


def capture_reads(sizes: list[int], forward) -> list[str]:
    reads = HostReads()
    with torch.inference_mode(), reads:
        for size in sorted(sizes, reverse=True):
            forward(size)
    return reads.calls


def test_the_mode_sees_each_kind_of_host_read() -> None:
    """The check can fail: each kind of read it looks for, made as model code would make it."""
    x, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    reads = [lambda: x[2].item(), lambda: x.tolist(), lambda: bool(x[1]), lambda: range(6)[x.long()[1]],
             lambda: x.nonzero(), lambda: x[mask], lambda: x[1:][mask[1:]], lambda: x.to("cpu"),
             lambda: x.repeat_interleave(mask.long()), lambda: torch.tensor([1, 2]), lambda: x.cpu()]
    for read in reads:
        found = HostReads()
        with found:
            read()
        assert len(found.calls) == 1 and __file__ in found.calls[0], found.calls
    index = torch.tensor([1])
    quiet = HostReads()
    with quiet:  # what stays on the device, sizes known on the host
        x[1:3].sum(), x.to(torch.float16), x.repeat_interleave(mask.long(), output_size=3), x[index]
    assert quiet.calls == []


def test_decode_graphs_capture_no_host_read(runner) -> None:
    graphs = DecodeGraphs(runner.model, runner.ops, max_batch_size=16, max_blocks_per_seq=4, block_size=16)
    graphs.slot_mapping.fill_(-1)  # as capture() sets them
    graphs.seq_lens.fill_(1)
    assert capture_reads(graphs.sizes, lambda size: graphs._forward(size, graphs.max_seq_len)) == []


def test_mixed_step_graphs_capture_no_host_read(runner) -> None:
    graphs = MixedStepGraphs(runner.model, runner.ops, max_num_seqs=4, max_num_tokens=40, max_blocks_per_seq=2,
                             block_size=16)
    graphs.slot_mapping.fill_(-1)
    assert capture_reads(graphs.sizes, graphs._forward) == []


def test_encoder_graphs_capture_no_host_read(runner) -> None:
    graphs = EncoderGraphs(runner.model.audio_tower, runner.ops, max_chunks=6)
    assert capture_reads(graphs.sizes, lambda size: graphs._forward(size, graphs.capture_window_lens(size))) == []
