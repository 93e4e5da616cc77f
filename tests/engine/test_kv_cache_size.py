"""The KV pool holds what its sequences can use, and on the CPU costs memory only as its blocks fill."""

import math
from pathlib import Path

import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.engine.model_runner import untouched_zeros


@pytest.fixture(scope="module")
def checkpoint(checkpoint_root: Path, write_checkpoint, shapes) -> Path:
    return write_checkpoint(checkpoint_root / "kv-size-gqa2", shapes[0], layout="hf", seed=3)


def test_the_pool_holds_max_num_seqs_of_the_longest_piece_with_a_default_output(checkpoint: Path) -> None:
    engine = ASR(str(checkpoint), max_num_seqs=8, max_piece_seconds=10).engine
    longest = engine.input_processor.longest_prompt_tokens()
    # 10 s: 130 audio tokens, plus the template's
    assert longest == 130 + engine.input_processor.prompts.num_template_tokens()
    blocks_per_sequence = math.ceil((longest + SamplingParams().max_tokens) / 16)
    assert engine.core.scheduler.config.num_blocks == 8 * blocks_per_sequence
    assert engine.core.runner.kv_cache.shape[2] == 8 * blocks_per_sequence


def test_memory_caps_the_pool_and_num_kv_blocks_overrides_it(checkpoint: Path) -> None:
    capped = ASR(str(checkpoint), max_num_seqs=64, cpu_kv_cache_gib=0.001).engine.core
    assert capped.scheduler.config.num_blocks == int(0.001 * (1 << 30) // capped.runner.kv_block_bytes())
    assert ASR(str(checkpoint), num_kv_blocks=5).engine.core.scheduler.config.num_blocks == 5
    with pytest.raises(ValueError, match="cpu_kv_cache_gib=1e-09 holds no KV cache block"):
        ASR(str(checkpoint), cpu_kv_cache_gib=1e-9)  # the CPU's setting is named, not the GPU's


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / (1 << 20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_untouched_zeros_become_resident_only_where_written(dtype: torch.dtype) -> None:
    before = resident_mib()
    pool = untouched_zeros((2, 4, 4096, 16, 8, 64), dtype)  # 256 MiB at 4 bytes, 64 MiB at 1
    assert pool.shape == (2, 4, 4096, 16, 8, 64) and pool.dtype == dtype
    assert resident_mib() - before < 16
    pool[:, :, :512] = 1
    written = pool.element_size() * pool[:, :, :512].numel() / (1 << 20)
    assert resident_mib() - before > 0.9 * written
    assert pool[:, :, 512:].float().abs().sum() == 0 and pool[0, 0, 0, 0, 0, 0].float() == 1
