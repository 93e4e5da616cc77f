"""Greedy output of engine.ASR is token-identical to transformers, in both checkpoint layouts."""

from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine import ASR, SamplingParams
from qasr.engine.languages import resolve_language
from qasr.engine.splitting import split_audio

CLIP_SECONDS = [0.3, 1.0, 7.9, 8.1, 23.0]
CONDITIONS = [(None, None), ("en", None), ("German", "Hotwords: Qwen, qasr, Paris.")]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def checkpoints(shape, shapes, checkpoint_root: Path, write_checkpoint) -> dict[str, Path]:
    return {layout: write_checkpoint(checkpoint_root / f"parity-{shape.name}-{layout}", shape, layout=layout,
                                     seed=shapes.index(shape))
            for layout in ("hf", "original")}


@pytest.fixture(scope="module")
def reference(checkpoints: dict[str, Path], transformers_reference):
    return transformers_reference(checkpoints["hf"])


class LogitRecorder:
    def __init__(self, asr: ASR):
        model = asr.engine.core.runner.model
        self.calls: list[torch.Tensor] = []
        original = model.compute_logits

        def record(hidden: torch.Tensor) -> torch.Tensor:
            logits = original(hidden)
            self.calls.append(logits.detach().clone())
            return logits

        model.compute_logits = record


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_greedy_tokens_and_logits_match_transformers(layout: str, checkpoints: dict[str, Path], reference,
                                                     speech_like) -> None:
    asr = ASR(str(checkpoints[layout]))
    recorder = LogitRecorder(asr)
    params = SamplingParams(max_tokens=MAX_TOKENS)
    for language, context in CONDITIONS:
        for i, seconds in enumerate(CLIP_SECONDS):
            clip = speech_like(seconds, seed=i)
            expected = reference.generate(clip, MAX_TOKENS, language, context)
            recorder.calls.clear()
            [result] = asr.transcribe([(clip, 16000)], language=language, context=context or "",
                                      sampling_params=params)
            where = f"{layout} {seconds}s language={language} context={bool(context)}"
            assert result.token_ids == expected.token_ids, where
            assert len(set(expected.token_ids)) >= 5, f"reference output not varied enough: {where}"
            assert relative_error(recorder.calls[-1][0], expected.last_logits) < 1e-4, where
            assert result.duration == pytest.approx(seconds, abs=1e-3)


def test_prompt_ids_match_the_processor(checkpoints: dict[str, Path], reference, speech_like) -> None:
    asr = ASR(str(checkpoints["original"]))
    for language, context in CONDITIONS + [("zh", "背景: 会议"), (None, "only context")]:
        for seconds in (0.3, 2.5, 9.0):
            clip = speech_like(seconds, seed=7)
            expected = reference.inputs(clip, language, context)["input_ids"][0].tolist()
            num_audio = expected.count(asr.engine.input_processor.special.audio_pad)
            ours, audio_start = asr.engine.input_processor.prompts.build(num_audio, context or "",
                                                                         resolve_language(language))
            assert ours == expected
            assert ours[audio_start] == asr.engine.input_processor.special.audio_pad
            assert ours[audio_start - 1] == asr.engine.input_processor.special.audio_start


def test_long_audio_pieces_match_transformers_piece_by_piece(checkpoints: dict[str, Path], reference,
                                                             speech_like) -> None:
    clip = speech_like(23.0, seed=11)
    clip[int(9.5 * 16000):int(9.8 * 16000)] = 0.0  # a pause near the first cut
    asr = ASR(str(checkpoints["hf"]), max_piece_seconds=10.0)
    [result] = asr.transcribe([(clip, 16000)], sampling_params=SamplingParams(max_tokens=MAX_TOKENS))
    pieces = split_audio(clip, 10.0)
    assert len(pieces) == 3 and len(result.segments) == 3
    expected = []
    for piece in pieces:
        expected += reference.generate(piece.samples, MAX_TOKENS).token_ids
    assert result.token_ids == expected
    assert [s.start for s in result.segments] == pytest.approx([p.start for p in pieces])
    assert 9.5 <= pieces[1].start <= 9.8
    assert result.segments[-1].end == pytest.approx(23.0, abs=1e-3)
    assert np.all(np.diff([s.start for s in result.segments]) > 0)


def test_the_conv_stem_in_slices_gives_the_encoder_output_of_one_pass(checkpoints: dict[str, Path], speech_like,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from qasr.engine import audio_encoder

    runner = ASR(str(checkpoints["hf"])).engine.core.runner
    mels = runner.features([speech_like(seconds, seed=40 + i) for i, seconds in enumerate((7.9, 23.0, 0.3))])
    outputs = {}
    with torch.inference_mode():
        for name, limit in (("one pass", 1 << 40), ("a chunk at a time", 1)):
            monkeypatch.setattr(audio_encoder, "CPU_CONV_SLICE_BYTES", limit)
            slice_chunks = runner.model.audio_tower.conv_slice_chunks(torch.zeros(33, 1, 128, 100))
            assert slice_chunks >= 33 if limit > 1 else slice_chunks == 1
            outputs[name] = runner.model.encode_audio(mels, runner.ops)
        monkeypatch.setattr(audio_encoder, "CPU_CONV_SLICE_BYTES", 20 * (1 << 20))
        tower = runner.model.audio_tower
        most = tower.conv_slice_chunks(torch.zeros(1, 1, 128, 100))
        assert most & (most - 1) == 0 and 2 * most * tower.conv2d1.out_channels * 64 * 50 * 4 > 20 * (1 << 20)
        shapes = set()
        for num_chunks in range(1, 3 * most):
            slices = tower.conv_slices(torch.zeros(num_chunks, 1, 128, 100))
            assert sum(slices) == num_chunks and len(slices) <= num_chunks // most + most.bit_length()
            shapes.update(slices)
        assert shapes == {1 << bit for bit in range(most.bit_length())}  # a few shapes for any count of chunks
    torch.testing.assert_close(outputs["a chunk at a time"], outputs["one pass"], rtol=1e-5, atol=1e-5)


def test_the_encoder_gelu_in_row_blocks_is_f_gelu_to_the_bit() -> None:
    from qasr.engine.audio_encoder import gelu_in_row_blocks

    generator = torch.Generator().manual_seed(0)
    for rows in (1, 2, 3, 7, 64, 100, 257, 1000):
        x = torch.randn(rows, 96, generator=generator) * 4
        assert torch.equal(gelu_in_row_blocks(x.clone()), torch.nn.functional.gelu(x)), rows


# --- the audio encoder's activation_function ------------------------------------------------------------


def test_an_audio_encoder_with_silu_matches_transformers(shapes, checkpoint_root: Path, write_checkpoint,
                                                         transformers_reference, speech_like) -> None:
    """The encoder layers' fc1 and the projector use the checkpoint's activation_function, not a fixed GELU."""
    checkpoints = {layout: write_checkpoint(checkpoint_root / f"parity-silu-{layout}", shapes[0], layout=layout,
                                            seed=0, activation="silu")
                   for layout in ("hf", "original")}
    reference = transformers_reference(checkpoints["hf"])
    assert reference.model.config.audio_config.activation_function == "silu"
    clips = [speech_like(seconds, seed=20 + i) for i, seconds in enumerate((1.0, 2.5))]
    expected = [reference.generate(clip, MAX_TOKENS).token_ids for clip in clips]
    for layout, path in checkpoints.items():
        asr = ASR(str(path))
        assert asr.engine.model_config.audio.activation == "silu", layout
        results = asr.transcribe([(clip, 16000) for clip in clips],
                                 sampling_params=SamplingParams(max_tokens=MAX_TOKENS))
        assert [result.token_ids for result in results] == expected, layout


def test_an_unsupported_audio_activation_is_refused(shapes, tmp_path: Path, write_checkpoint) -> None:
    for layout in ("hf", "original"):
        path = write_checkpoint(tmp_path / layout, shapes[0], layout=layout, activation="gelu_new")
        with pytest.raises(ValueError, match="activation_function"):
            ASR(str(path))
