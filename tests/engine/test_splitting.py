import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qasr.engine.splitting import AudioPiece, max_pieces, split_audio

RATE = 16000


def loud_noise(seconds: float, seed: int) -> np.ndarray:
    """White noise at one level throughout. Not the shared `speech_like` fixture: its syllable envelope dips to
    silence several times a second, which would compete with the quiet gaps these tests place."""
    return (0.3 * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(np.float32)


def with_quiet_gaps(seconds: float, gaps: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Loud noise everywhere except the (start, end) second ranges in `gaps`, which hold faint noise."""
    samples = loud_noise(seconds, seed)
    for start, end in gaps:
        samples[round(start * RATE) : round(end * RATE)] *= 1e-3
    return samples


def unpadded(pieces: list[AudioPiece], total: int) -> list[np.ndarray]:
    ends = [round(piece.start * RATE) for piece in pieces[1:]] + [total]
    return [piece.samples[: end - round(piece.start * RATE)] for piece, end in zip(pieces, ends, strict=True)]


def test_cuts_land_in_the_quiet_gaps() -> None:
    gaps = [(27.0, 27.4), (55.5, 56.0), (83.0, 83.3)]
    samples = with_quiet_gaps(95.0, gaps)

    pieces = split_audio(samples, max_piece_seconds=30.0)

    assert len(pieces) == 4
    for piece, (gap_start, gap_end) in zip(pieces[1:], gaps, strict=True):
        assert gap_start <= piece.start < gap_end
    assert all(len(piece.samples) <= 30 * RATE for piece in pieces)
    assert pieces[0].start == 0.0
    parts = unpadded(pieces, len(samples))
    np.testing.assert_array_equal(np.concatenate(parts), samples)
    starts = np.cumsum([0] + [len(part) for part in parts[:-1]]) / RATE
    np.testing.assert_allclose([piece.start for piece in pieces], starts)


def test_cut_is_the_quietest_sample_of_the_quietest_window() -> None:
    samples = loud_noise(12.0, seed=1)
    samples[round(8.0 * RATE) : round(8.1 * RATE)] *= 0.01
    samples[round(8.05 * RATE)] = 0.0
    pieces = split_audio(samples, max_piece_seconds=10.0, search_seconds=5.0)
    assert [piece.start for piece in pieces] == [0.0, 8.05]


def test_search_never_passes_the_longest_allowed_piece() -> None:
    # The only silence is just after 10 s: the reference would cut there and exceed the limit.
    samples = with_quiet_gaps(15.0, [(10.05, 11.0)], seed=2)
    pieces = split_audio(samples, max_piece_seconds=10.0)
    assert len(pieces[0].samples) <= 10 * RATE
    assert 5.0 <= pieces[1].start <= 10.0


def test_short_clip_is_one_unpadded_piece() -> None:
    samples = loud_noise(0.2, seed=3)
    (piece,) = split_audio(samples, max_piece_seconds=30.0)
    assert piece.samples is samples
    assert piece.start == 0.0
    assert piece.duration == pytest.approx(0.2)


def test_clip_of_exactly_max_length_is_not_split() -> None:
    samples = loud_noise(30.0, seed=4)
    assert len(split_audio(samples, max_piece_seconds=30.0)) == 1


def test_tiny_tail_is_zero_padded_to_half_a_second() -> None:
    samples = loud_noise(30.2, seed=5)
    head, tail = split_audio(samples, max_piece_seconds=30.0, search_seconds=0.0)

    assert len(head.samples) == 30 * RATE
    assert tail.start == pytest.approx(30.0)
    assert len(tail.samples) == RATE // 2
    assert tail.duration == pytest.approx(0.5)
    np.testing.assert_array_equal(tail.samples[: round(0.2 * RATE)], samples[30 * RATE :])
    assert not tail.samples[round(0.2 * RATE) :].any()
    assert tail.samples.dtype == np.float32


@pytest.mark.parametrize("seed", range(6))
def test_pieces_always_tile_the_input(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = loud_noise(rng.uniform(1.0, 40.0), seed) * rng.uniform(0.0, 1.0, 1).astype(np.float32)
    max_seconds = rng.uniform(0.3, 8.0)

    pieces = split_audio(samples, max_piece_seconds=max_seconds, search_seconds=rng.uniform(0.0, 6.0))

    max_len = int(max_seconds * RATE)
    parts = unpadded(pieces, len(samples))
    np.testing.assert_array_equal(np.concatenate(parts), samples)
    assert all(0 < len(part) <= max_len for part in parts)
    assert all(len(piece.samples) >= min(RATE // 2, len(samples)) for piece in pieces)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match=r"max_piece_seconds must be positive"):
        split_audio(loud_noise(1.0, seed=6), max_piece_seconds=0.0)
    with pytest.raises(ValueError, match=r"1-D mono"):
        split_audio(np.zeros((100, 2), np.float32), max_piece_seconds=1.0)


def signal(kind: str, seconds: float, seed: int) -> np.ndarray:
    length = round(seconds * RATE)
    if kind == "silence":
        return np.zeros(length, np.float32)
    if kind == "noise":
        return loud_noise(seconds, seed)
    # noise with silent stretches of 0.2 to 9 s: the shape that used to be chopped into tiny pieces
    samples, rng, position = loud_noise(seconds, seed), np.random.default_rng(seed), 0
    while position < length:
        position += int(rng.uniform(0.5, 6.0) * RATE)
        gap = int(rng.uniform(0.2, 9.0) * RATE)
        samples[position:position + gap] = 0.0
        position += gap
    return samples


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["silence", "noise", "gappy"]), st.floats(0.5, 120.0), st.floats(2.0, 45.0),
       st.integers(0, 2**16))
def test_piece_counts_and_lengths(kind: str, seconds: float, max_piece_seconds: float, seed: int) -> None:
    samples = signal(kind, seconds, seed)
    pieces = split_audio(samples, max_piece_seconds=max_piece_seconds)
    max_len = int(max_piece_seconds * RATE)
    parts = unpadded(pieces, len(samples))
    np.testing.assert_array_equal(np.concatenate(parts), samples)
    assert all(0 < len(part) <= max_len for part in parts)
    assert all(len(part) >= max_len // 2 for part in parts[:-1])  # only the last piece may be short
    assert len(pieces) <= max_pieces(len(samples), max_piece_seconds)


@pytest.mark.parametrize(("seconds", "max_piece_seconds", "expected"),
                         [(120.0, 30.0, 5), (60.0, 30.0, 3), (45.0, 30.0, 2), (30.0, 30.0, 1), (8.0, 5.0, 3),
                          (1.0, 30.0, 1)])
def test_max_pieces_is_reached_where_every_cut_comes_as_early_as_it_may(seconds: float, max_piece_seconds: float,
                                                                         expected: int) -> None:
    """Rising loudness puts each piece's quietest window, and its quietest sample, first in the search: every cut
    falls the search's length before the longest piece would end (25 s pieces of at most 30), so a 120 s clip gives
    5 pieces where 120 / 30 would say 4."""
    ramp = np.linspace(0.01, 1.0, round(seconds * RATE), dtype=np.float32)
    pieces = split_audio(ramp, max_piece_seconds=max_piece_seconds)
    assert len(pieces) == max_pieces(len(ramp), max_piece_seconds) == expected
    if expected > 2:
        assert round(pieces[1].duration, 3) == max_piece_seconds - min(5.0, max_piece_seconds / 2)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.5, 120.0), st.floats(0.5, 40.0), st.floats(0.0, 10.0))
def test_max_pieces_is_tight_for_any_search(seconds: float, max_piece_seconds: float, search_seconds: float) -> None:
    """Rising loudness: each cut as early as the search allows, the most pieces there can be."""
    ramp = np.linspace(0.01, 1.0, round(seconds * RATE), dtype=np.float32)
    pieces = split_audio(ramp, max_piece_seconds=max_piece_seconds, search_seconds=search_seconds)
    assert len(pieces) == max_pieces(len(ramp), max_piece_seconds, search_seconds=search_seconds)


def test_silence_is_cut_into_the_longest_pieces() -> None:
    pieces = split_audio(np.zeros(10 * RATE, np.float32), max_piece_seconds=3)  # was 112,001 one-sample pieces
    assert [len(piece.samples) for piece in pieces] == [3 * RATE, 3 * RATE, 3 * RATE, RATE]


@pytest.mark.parametrize("seconds", [0.5, 1.99, 1200.5])
def test_the_engine_refuses_pieces_too_short_or_too_long(seconds: float) -> None:
    from qasr.engine.config import EngineConfig

    with pytest.raises(ValueError, match=r"max_piece_seconds must be in \[2, 1200\]"):
        EngineConfig(max_piece_seconds=seconds)


def test_content_hash_tells_audios_apart_and_reads_any_layout() -> None:
    from qasr.engine.input_processor import content_hash

    samples = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert content_hash(samples) == content_hash(samples.copy()) and len(content_hash(samples)) == 16
    assert content_hash(samples[::2]) == content_hash(np.ascontiguousarray(samples[::2]))  # a strided view
    nudged = samples.copy()
    nudged[8000] = np.nextafter(nudged[8000], np.float32(1))  # one sample, one ulp
    assert content_hash(nudged) != content_hash(samples) != content_hash(samples[:-1])
