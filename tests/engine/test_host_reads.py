"""No host read of the device's data where it would cost: inside what the CUDA graphs capture, and inside a step's
launch.

Such a read (.item(), .tolist(), bool() of a tensor, nonzero, a boolean mask's gather or store, a copy to the CPU)
waits for the device. Inside a capture it makes the capture fail, or bakes in the value the capture saw (as does a
tensor made there from host data, or on the host for want of a device); inside ModelRunner.launch it makes the host
wait for the step before to finish, and the engine's overlapped step (launch N while N-1 runs, then take N-1's
tokens: PendingTokens.result, the step's only wait) loses its overlap. A GPU finds the first out at capture time and
the second not at all, only slower; here, without one, the code runs eagerly on the CPU (the Triton kernels
interpreted) while two torch modes record such calls: a dispatch mode sees the reads at the aten level, wherever
they are made (Python or C++), and a function mode the ones that leave no aten op on the CPU (a copy to the host is
none there). The Triton interpreter's own copies of a kernel's arguments to the host, which a compiled launch does not
make, are left out.
"""

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType

import numpy as np
import pytest
import torch
import triton
from torch._ops import OpOverload
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from qasr.engine import ASR, SamplingParams
from qasr.engine.decode_graphs import DecodeGraphs
from qasr.engine.encoder_graphs import EncoderGraphs
from qasr.engine.mixed_graphs import MixedStepGraphs
from qasr.engine.model_runner import ModelRunner, PendingTokens
from qasr.engine.request import TranscriptionRequest
from qasr.kernels.triton.tuning import AttentionTuning, attention_tuning
from qasr.scheduler import SchedulerOutput

aten = torch.ops.aten
Tensor = torch.Tensor
# a value or a size read from the data, a synchronisation on a GPU
ATEN_READS = {
    aten.item.default, aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
    aten.masked_select.default, aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
    aten.equal.default, aten.bincount.default, aten.histc.default, aten.where.default, aten.argwhere.default,
}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
# no aten op on the CPU: copies to the host, and tensors made from host data or, without a device, on the host
FUNCTION_READS = {Tensor.tolist, Tensor.cpu, Tensor.numpy, Tensor.__array__, torch.tensor, torch.as_tensor,
                  torch.from_numpy}
FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.randint,
             torch.linspace, torch.eye}
TRITON_PACKAGE = str(Path(triton.__file__).parent) + os.sep
TORCH_PACKAGE = str(Path(torch.__file__).parent) + os.sep


def aten_reads(func: OpOverload, args: tuple, kwargs: dict) -> bool:
    if func in ATEN_READS:
        return True
    if func in INDEXING:  # a boolean index: the selection's size is its count of True
        return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    if func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor):  # the output's size, unless given
        return kwargs.get("output_size") is None
    return False


def function_reads(func: Callable, args: tuple, kwargs: dict) -> bool:
    if func in FUNCTION_READS:
        return True
    if func in FACTORIES:
        return kwargs.get("device") is None
    if func is Tensor.to:  # to the CPU
        return any(torch.device(a).type == "cpu" for a in [*args[1:], kwargs.get("device")]
                   if isinstance(a, (str, torch.device)))
    return False


class AtenReads(TorchDispatchMode):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func: OpOverload, types: tuple, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if aten_reads(func, args, kwargs):
            record(self.calls, func, sys._getframe(1))
        return func(*args, **kwargs)


class FunctionReads(TorchFunctionMode):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if function_reads(func, args, kwargs):
            record(self.calls, func, sys._getframe(1))
        return func(*args, **kwargs)


def record(calls: list[str], func: Callable, caller: FrameType) -> None:
    """Notes the call and the first place outside torch that made it, unless the Triton interpreter made it."""
    frame, place = caller, None
    while frame is not None:
        if frame.f_code.co_filename.startswith(TRITON_PACKAGE):
            return
        if (place is None and not frame.f_code.co_filename.startswith(TORCH_PACKAGE)
                and frame.f_code not in (AtenReads.__torch_dispatch__.__code__,
                                         FunctionReads.__torch_function__.__code__)):
            place = frame
        frame = frame.f_back
    where = f"{place.f_code.co_filename}:{place.f_lineno}" if place is not None else "torch"
    calls.append(f"{getattr(func, '__qualname__', func)} at {where}")


@contextlib.contextmanager
def host_reads() -> Iterator[list[str]]:
    """The host reads made inside the block, as 'name at file:line'."""
    calls: list[str] = []
    with FunctionReads(calls), AtenReads(calls):
        yield calls


@pytest.fixture(scope="module")
def runner(checkpoint_root: Path, shapes, write_checkpoint) -> ModelRunner:
    checkpoint = write_checkpoint(checkpoint_root / "graph-capture", shapes[1], layout="hf", seed=11)
    runner = ASR(str(checkpoint), attention_backend="triton", max_num_seqs=4, num_kv_blocks=8).engine.core.runner
    runner.model.model.rotary.tables(256)  # as the engine does on a GPU before capturing: the tables never grow
    return runner


def capture_reads(sizes: list[int], forward: Callable[[int], None]) -> list[str]:
    with torch.inference_mode(), host_reads() as calls:
        for size in sorted(sizes, reverse=True):
            forward(size)
    return calls


@pytest.mark.parametrize("inference", [False, True], ids=["grad", "inference-mode"])
def test_the_modes_see_each_kind_of_host_read(inference: bool) -> None:
    """The check can fail: each kind of read it looks for, made as model code would make it, is seen and placed
    here; what stays on the device is not. In and out of inference mode, which the captures run in (and where some
    reads reach the dispatcher as other ops: int() of a tensor as aten.item, not aten._local_scalar_dense)."""
    with torch.inference_mode(inference):
        see_each_kind_of_host_read()


def see_each_kind_of_host_read() -> None:
    x, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    reads = [lambda: x[2].item(), lambda: x.tolist(), lambda: bool(x[1]), lambda: range(6)[x.long()[1]],
             lambda: f"{x[1]:.3f}", lambda: 2.0 in x, lambda: x.nonzero(), lambda: torch.where(mask), lambda: x[mask],
             lambda: torch.argwhere(x),
             lambda: x[1:][mask[1:]], lambda: x.clone().__setitem__(mask, 0.0), lambda: x.to("cpu"),
             lambda: x.cpu(), lambda: np.asarray(x), lambda: x.repeat_interleave(mask.long()),
             lambda: torch.bincount(x.long()), lambda: torch.unique(x), lambda: torch.equal(x, x),
             lambda: torch.tensor([1, 2]), lambda: torch.zeros(3), lambda: torch.arange(4)]
    for number, read in enumerate(reads):
        with host_reads() as calls:
            read()
        assert calls and all(__file__ in call for call in calls), (number, calls)
    index = torch.tensor([1])
    with host_reads() as calls:  # what stays on the device, sizes known on the host
        x[1:3].sum(), x.to(torch.float16), x.repeat_interleave(mask.long(), output_size=3), x[index]
        x.masked_fill(mask, 0.0), torch.where(mask, x, 0.0), torch.zeros(3, device=x.device)
    assert calls == []


def test_decode_graphs_capture_no_host_read(runner: ModelRunner) -> None:
    graphs = DecodeGraphs(runner.model, runner.ops, max_batch_size=16, max_blocks_per_seq=4, block_size=16)
    graphs.slot_mapping.fill_(-1)  # as capture() sets them
    graphs.seq_lens.fill_(1)
    assert capture_reads(graphs.sizes, lambda size: graphs._forward(size, graphs.max_seq_len)) == []


@pytest.mark.parametrize("min_decodes", [256, 2], ids=["decodes with the chunks", "decodes apart from 2"])
def test_mixed_step_graphs_capture_no_host_read(min_decodes: int, runner: ModelRunner) -> None:
    graphs = MixedStepGraphs(runner.model, runner.ops, max_num_seqs=4, max_num_tokens=40, max_blocks_per_seq=2,
                             block_size=16)
    graphs.slot_mapping.fill_(-1)
    with attention_tuning(AttentionTuning(decode_launch_min_seqs=min_decodes)):
        assert capture_reads(graphs.sizes, graphs._forward) == []


def test_encoder_graphs_capture_no_host_read(runner: ModelRunner) -> None:
    graphs = EncoderGraphs(runner.model.audio_tower, runner.ops, max_chunks=6)
    assert capture_reads(graphs.sizes, lambda size: graphs._forward(size, graphs.capture_window_lens(size))) == []


def test_a_launch_on_the_gpu_path_waits_for_nothing(checkpoint_root: Path, shapes, write_checkpoint,
                                                   speech_like) -> None:
    """Every step's launch with the Triton backend (the GPU's; graphs off, as the steps they do not cover run):
    prefill with the audio encoder, decodes, a step mixing both, greedy and sampled rows. Only device reads count:
    a launch builds its inputs on the host (numpy, pinned copies), which the function mode's host-data rules would
    flag."""
    checkpoint = write_checkpoint(checkpoint_root / "launch-reads", shapes[0], layout="original", seed=12)
    engine = ASR(str(checkpoint), attention_backend="triton", max_num_seqs=4).engine
    runner = engine.core.runner
    launch, reads, kinds = runner.launch, [], set()

    def watched(step: SchedulerOutput, waveforms: Mapping[int, np.ndarray]) -> PendingTokens:
        kinds.add((bool(step.to_encode), step.num_decodes > 0, step.num_decodes < len(step.chunks)))
        with AtenReads(reads):
            return launch(step, waveforms)

    runner.launch = watched
    params = [SamplingParams(max_tokens=6, ignore_eos=True),
              SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.8, top_k=5, top_p=0.9, seed=1)]
    for i in range(2):
        engine.add_request(TranscriptionRequest(speech_like(0.6 + 0.5 * i, seed=700 + i), sampling_params=params[i]))
    for _ in range(2):  # the first two in flight, then a third joins their decodes
        engine.step()
    engine.add_request(TranscriptionRequest(speech_like(0.8, seed=702), sampling_params=params[0]))
    while engine.has_unfinished:
        engine.step()
    # a prefill with audio alone, one joining decodes, and pure decodes
    assert {(True, False, True), (True, True, True), (False, True, False)} <= kinds
    assert reads == []
