"""The attention kernels' launch parameters: read from QASR_ATTENTION_TUNING, checked, and every setting the tuner
tries gives the reference's result (the interpreter on CPU: tile widths change the arithmetic's order, warps and
stages only the compiled code)."""

import os
import subprocess
import sys

import pytest
import torch

from qasr.kernels.kv_cache_dtype import FP8_DTYPE, to_cache_dtype
from qasr.kernels.reference import paged_attention as reference
from qasr.kernels.triton import paged_attention, split_kv_attention
from qasr.kernels.triton.paged_attention import unified_attention
from qasr.kernels.triton.tuning import ENV_VAR, AttentionTuning, attention_tuning, current_tuning


def test_settings_round_trip_and_bad_ones_name_the_variable() -> None:
    tuning = AttentionTuning.parse(" decode_tile_n=32, decode_num_warps=8 ,")
    assert tuning == AttentionTuning(decode_tile_n=32, decode_num_warps=8)
    assert AttentionTuning.parse(tuning.describe()) == tuning
    assert AttentionTuning.parse("") == AttentionTuning() and AttentionTuning().describe() == ""
    assert AttentionTuning.parse("fp8_dot_fp16=1").describe() == "fp8_dot_fp16=1"
    for bad in ("decode_tile_n=24", "decode_tile_n=8", "prefill_num_warps=3", "split_num_stages=0", "tile=32",
                "decode_num_warps=four", "decode_launch_min_seqs=-1", "fp8_dot_fp16=2", "fp8_decode_tile_n=48",
                "fp8_decode_num_warps=3", "fp8_decode_num_stages=0", "decode_max_registers=16",
                "fp8_decode_max_registers=256"):
        with pytest.raises(ValueError, match="tile_n|num_warps|num_stages|max_registers|min_seqs|fp8_dot_fp16|"
                                             + ENV_VAR):
            AttentionTuning.parse(bad)


def test_the_environment_sets_the_process_tuning() -> None:
    code = "from qasr.kernels.triton.tuning import current_tuning; print(current_tuning().describe())"
    env = {**os.environ, ENV_VAR: "split_tile_n=64,prefill_num_stages=2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "prefill_num_stages=2,split_tile_n=64"


@pytest.mark.parametrize("tuning", [AttentionTuning(decode_tile_n=32, prefill_tile_n=64, split_tile_n=32),
                                    AttentionTuning(decode_tile_n=64, prefill_tile_n=16, split_tile_n=64,
                                                    prefill_num_warps=8, prefill_num_stages=2, split_num_warps=2)],
                         ids=lambda t: t.describe())
@pytest.mark.parametrize("split_kv", [False, True])
def test_every_tuning_gives_the_references_result(tuning: AttentionTuning, split_kv: bool, paged_batch,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    query_lens, context_lens = ([1, 1, 1], [5, 70, 130]) if split_kv else ([1, 13, 22, 1], [30, 19, 0, 90])
    batch = paged_batch(query_lens, context_lens, 4, 2, 16, torch.float32, seed=5)
    launches = {}
    for module, name in ((paged_attention, "_unified_attention_kernel"), (split_kv_attention, "_segment_kernel"),
                         (split_kv_attention, "_reduce_segments_kernel")):
        monkeypatch.setattr(module, name, LaunchSpy(getattr(module, name), name, launches))
    before = current_tuning()
    with attention_tuning(tuning):
        assert current_tuning() == tuning
        out = unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, split_kv=split_kv)
    assert current_tuning() == before
    expected = reference.paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    assert (out - expected).abs().max().item() <= 2e-5
    if split_kv:  # the reduce must count tiles as the segment kernel did
        segment, reduce = launches["_segment_kernel"], launches["_reduce_segments_kernel"]
        assert segment["TILE_N"] == reduce["TILE_N"] == tuning.split_tile_n
        assert (segment["num_warps"], segment["num_stages"]) == (tuning.split_num_warps, tuning.split_num_stages)
    else:  # a mixed batch: the prefill tiles
        launch = launches["_unified_attention_kernel"]
        assert (launch["TILE_N"], launch["num_warps"], launch["num_stages"]) == (
            tuning.prefill_tile_n, tuning.prefill_num_warps, tuning.prefill_num_stages)


class LaunchSpy:
    """Stands in for a Triton kernel: records the keyword arguments of its last launch under its name, and every
    launch's (name, grid, keyword arguments) under "all", and launches the kernel."""

    def __init__(self, kernel, name: str, launches: dict) -> None:
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        def launch(**kwargs):
            self.launches[self.name] = kwargs
            self.launches.setdefault("all", []).append((self.name, grid, kwargs))
            return self.kernel[grid](**kwargs)
        return launch


def test_a_pure_decode_batch_takes_the_decode_tiles(paged_batch, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = paged_batch([1, 1, 1, 1], [3, 40, 17, 66], 4, 2, 16, torch.float32, seed=6)
    launches = {}
    monkeypatch.setattr(paged_attention, "_unified_attention_kernel",
                        LaunchSpy(paged_attention._unified_attention_kernel, "unified", launches))
    with attention_tuning(AttentionTuning(decode_tile_n=64, decode_num_warps=8, decode_num_stages=2)):
        out = unified_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, split_kv=False)
    launch = launches["unified"]
    assert (launch["TILE_N"], launch["num_warps"], launch["num_stages"]) == (64, 8, 2)
    expected = reference.paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    assert (out - expected).abs().max().item() <= 2e-5


def spied_launches(batch, fp8: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The batch's caches (as e4m3 if fp8) and the dict a LaunchSpy on the unified kernel fills."""
    k_cache, v_cache = batch.k_cache, batch.v_cache
    if fp8:
        k_cache, v_cache = to_cache_dtype(k_cache, FP8_DTYPE), to_cache_dtype(v_cache, FP8_DTYPE)
    launches: dict = {}
    monkeypatch.setattr(paged_attention, "_unified_attention_kernel",
                        LaunchSpy(paged_attention._unified_attention_kernel, "unified", launches))
    return k_cache, v_cache, launches


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32 cache", "fp8 cache"])
def test_the_decode_settings_follow_the_caches_dtype(fp8: bool, paged_batch,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_* over a cache in the model's dtype, fp8_decode_* over an FP8 one, the register cap passed as
    Triton's maxnreg where one is set (the interpreter takes and ignores it); 300 keys span three 128-key tiles."""
    batch = paged_batch([1, 1, 1], [0, 90, 300], 4, 2, 16, torch.float32, seed=8)
    k_cache, v_cache, launches = spied_launches(batch, fp8, monkeypatch)
    tuning = AttentionTuning(decode_tile_n=32, decode_max_registers=96, fp8_decode_tile_n=128,
                             fp8_decode_num_warps=8, fp8_decode_num_stages=2, fp8_decode_max_registers=128)
    with attention_tuning(tuning):
        out = unified_attention(batch.query, k_cache, v_cache, batch.meta, batch.scale, split_kv=False)
    launch = launches["unified"]
    assert (launch["TILE_N"], launch["num_warps"], launch["num_stages"], launch.get("maxnreg")) == (
        (128, 8, 2, 128) if fp8 else (32, 4, 3, 96))
    expected = reference.paged_attention(batch.query, k_cache, v_cache, batch.meta, batch.scale)
    assert (out - expected).abs().max().item() <= 2e-5


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32 cache", "fp8 cache"])
@pytest.mark.parametrize("min_seqs", [0, 3, 4])
def test_a_mixed_steps_leading_decodes_get_a_launch_with_the_decode_tiles(min_seqs: int, fp8: bool, paged_batch,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Three decodes, then prefill chunks: from the cache kind's decode_launch_min_seqs decodes on (0: never) the
    decodes go first in a launch of their own with that kind's decode settings, the chunks in the prefill launch (no
    register cap); fewer ride with the chunks. The other kind's threshold would always give them one."""
    batch = paged_batch([1, 1, 1, 13, 22, 1], [3, 40, 17, 19, 0, 66], 4, 2, 16, torch.float32, seed=7)
    assert batch.meta.num_decodes == 3
    k_cache, v_cache, launches = spied_launches(batch, fp8, monkeypatch)
    tuning = AttentionTuning(decode_tile_n=64, decode_num_warps=8, decode_num_stages=2, decode_max_registers=96,
                             fp8_decode_tile_n=128, fp8_decode_num_warps=2, fp8_decode_num_stages=4,
                             fp8_decode_max_registers=128, prefill_tile_n=16,
                             decode_launch_min_seqs=1 if fp8 else min_seqs,
                             fp8_decode_launch_min_seqs=min_seqs if fp8 else 1)
    with attention_tuning(tuning):
        out = unified_attention(batch.query, k_cache, v_cache, batch.meta, batch.scale)
    settings = [(kwargs["num_seqs"], kwargs["TILE_N"], kwargs["num_warps"], kwargs["num_stages"],
                 kwargs.get("maxnreg")) for _, _, kwargs in launches["all"]]
    prefill = (tuning.prefill_tile_n, tuning.prefill_num_warps, tuning.prefill_num_stages, None)
    if 0 < min_seqs <= 3:
        assert settings == [(3, *((128, 2, 4, 128) if fp8 else (64, 8, 2, 96))), (3, *prefill)]
    else:
        assert settings == [(6, *prefill)]
    expected = reference.paged_attention(batch.query, k_cache, v_cache, batch.meta, batch.scale)
    assert (out - expected).abs().max().item() <= 2e-5
