"""Backend dispatch, and the whole engine on the Triton backend (interpreted on CPU) against the torch backend."""

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.kernels import AttentionMetadata, ModelOps, get_model_ops
from qasr.kernels.kv_cache_dtype import is_fp8
from qasr.kernels.triton.paged_attention import use_split_kv
from qasr.kernels.triton.tuning import AttentionTuning, attention_tuning, current_tuning

CLIP_SECONDS = [0.6, 2.3, 1.2]
MAX_TOKENS = 5


def test_default_backend_is_torch_on_cpu() -> None:
    assert get_model_ops(None, torch.device("cpu")).name == "torch"
    assert get_model_ops("torch", torch.device("cpu")).name == "torch"


def test_triton_on_cpu_runs_interpreted() -> None:
    backend = get_model_ops("triton", torch.device("cpu"))
    assert backend.name == "triton"
    assert all(callable(getattr(backend, f.name)) for f in fields(ModelOps) if f.name != "name")


def test_triton_on_cpu_without_the_interpreter_is_a_clear_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        get_model_ops("triton", torch.device("cpu"))


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        get_model_ops("flash", torch.device("cpu"))


@pytest.fixture(scope="module")
def checkpoint(checkpoint_root: Path, shapes, write_checkpoint) -> Path:
    # gqa3: 6 query heads over 2 KV heads of 24 (padded to 32 in the kernels); encoder heads of 12
    return write_checkpoint(checkpoint_root / "kernels-gqa3", shapes[1], layout="hf", seed=5)


@pytest.fixture(scope="module")
def clips(speech_like) -> list[np.ndarray]:
    return [speech_like(seconds, seed=7 + i) for i, seconds in enumerate(CLIP_SECONDS)]


def transcribe(asr: ASR, clips: list[np.ndarray]) -> list[list[int]]:
    results = asr.transcribe([(clip, 16000) for clip in clips], sampling_params=SamplingParams(max_tokens=MAX_TOKENS))
    return [result.token_ids for result in results]


@pytest.fixture(scope="module")
def expected(checkpoint: Path, clips: list[np.ndarray]) -> list[list[int]]:
    tokens = transcribe(ASR(str(checkpoint), device="cpu", attention_backend="torch"), clips)
    assert all(len(t) == MAX_TOKENS for t in tokens)
    return tokens


def record_attention_kinds(asr: ASR) -> set[str]:
    """Which kinds of batch the Triton paged attention was called with."""
    kinds: set[str] = set()
    runner = asr.engine.core.runner
    attend = runner.ops.paged_attention

    def spy(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
            scale: float) -> torch.Tensor:
        contexts = [s - q for q, s in zip(meta.query_lens_host, meta.seq_lens_host)]
        leading = next((i for i, q in enumerate(meta.query_lens_host) if q != 1), meta.num_seqs)
        assert meta.num_decodes == leading  # the runner counts the one-token queries the scheduler puts first
        if use_split_kv(meta, k_cache.shape[2]):
            kinds.add("split-kv decode")
        if any(q == 1 for q in meta.query_lens_host) and meta.max_query_len > 1:
            kinds.add("decode mixed with prefill")
        if any(q > 1 and c > 0 for q, c in zip(meta.query_lens_host, contexts)):
            kinds.add("chunked prefill")
        min_decodes = current_tuning().decode_launch_min_seqs_for(is_fp8(k_cache.dtype))
        if not meta.is_pure_decode and 0 < min_decodes <= meta.num_decodes:
            kinds.add("decodes in a launch of their own")
        return attend(query, k_cache, v_cache, meta, scale)

    runner.ops = replace(runner.ops, paged_attention=spy)
    return kinds


MIXED_KINDS = {"split-kv decode", "decode mixed with prefill", "chunked prefill"}


@pytest.mark.parametrize(("options", "tuning", "kinds"), [
    ({}, AttentionTuning(), {"split-kv decode"}),
    ({"max_num_batched_tokens": 40}, AttentionTuning(), MIXED_KINDS),
    # every mixed step's decodes in a launch of their own
    ({"max_num_batched_tokens": 40}, AttentionTuning(decode_launch_min_seqs=1),
     MIXED_KINDS | {"decodes in a launch of their own"}),
], ids=["prefill-then-decode", "chunked-mixed", "chunked-mixed-decodes-apart"])
def test_engine_on_triton_matches_torch(checkpoint: Path, clips: list[np.ndarray], expected: list[list[int]],
                                        options: dict, tuning: AttentionTuning, kinds: set[str]) -> None:
    asr = ASR(str(checkpoint), device="cpu", attention_backend="triton", **options)
    seen = record_attention_kinds(asr)
    with attention_tuning(tuning):
        assert transcribe(asr, clips) == expected
    assert seen == kinds


def test_warm_up_runs_every_kernel_variant_and_stores_nothing(checkpoint: Path) -> None:
    asr = ASR(str(checkpoint), device="cpu", attention_backend="triton", num_kv_blocks=8)
    runner = asr.engine.core.runner
    runner.kv_cache.normal_()
    before = runner.kv_cache.clone()
    attended = []
    attend = runner.ops.paged_attention

    def spy(query, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        attended.append((tuple(meta.query_lens_host), use_split_kv(meta, k_cache.shape[2])))
        return attend(query, k_cache, v_cache, meta, scale)

    runner.ops = replace(runner.ops, paged_attention=spy)
    runner.warm_up()
    assert torch.equal(runner.kv_cache, before)
    kinds = {(max(lens), len(lens) > 1, split) for lens, split in attended}
    # split-KV decode, unified decode, short mixed queries, prefill
    assert {(1, False, True), (1, True, False), (2, True, False), (64, False, False)} <= kinds
