import io
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from qasr.engine.audio import SAMPLE_RATE, AudioError, AudioTooLongError, load_audio

TONE_HZ = 1000.0


def tone(frequency: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def tone_and_chirp(seconds: float, rate: int) -> np.ndarray:
    """A steady 1 kHz tone (a clear spectral peak) plus a 300 Hz -> 3 kHz sweep (a unique alignment)."""
    t = np.arange(round(seconds * rate)) / rate
    sweep_phase = 2 * np.pi * (300.0 * t + (3000.0 - 300.0) / (2 * seconds) * t**2)
    return (0.3 * np.sin(2 * np.pi * TONE_HZ * t) + 0.2 * np.sin(sweep_phase)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * rate / len(samples)


def aligned_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Pearson correlation of the overlapping parts at the best lag within +-max_lag, and that lag."""
    size = len(decoded) + len(reference)
    cross = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.r_[0 : max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(cross[lags])])
    shifted = decoded[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), decoded])
    overlap = min(len(shifted), len(reference))
    return float(np.corrcoef(shifted[:overlap], reference[:overlap])[0, 1]), lag


def write_with_soundfile(format: str, subtype: str) -> Callable[[Path, np.ndarray, int], None]:
    def write(path: Path, samples: np.ndarray, rate: int) -> None:
        sf.write(path, samples, rate, format=format, subtype=subtype)

    return write


def write_with_av(container: str, codec: str) -> Callable[[Path, np.ndarray, int], None]:
    def write(path: Path, samples: np.ndarray, rate: int) -> None:
        layout = "mono" if samples.ndim == 1 else "stereo"
        planar = np.ascontiguousarray(samples.reshape(len(samples), -1).T)
        with av.open(str(path), "w", format=container) as output:
            stream = output.add_stream(codec, rate=rate, layout=layout)
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
            frame.rate, frame.pts = rate, 0
            # The stream re-chunks the frame into the codec's frame size and converts its sample format.
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                output.mux(packet)

    return write


# name: (file suffix, source rate, writer). soundfile writes what libsndfile can; PyAV the rest.
FORMATS = {
    "wav": (".wav", 44100, write_with_soundfile("WAV", "PCM_16")),
    "flac": (".flac", 48000, write_with_soundfile("FLAC", "PCM_24")),
    "mp3": (".mp3", 44100, write_with_soundfile("MP3", "MPEG_LAYER_III")),
    "ogg-vorbis": (".ogg", 22050, write_with_soundfile("OGG", "VORBIS")),
    "ogg-opus": (".opus", 48000, write_with_av("ogg", "libopus")),
    "m4a-aac": (".m4a", 44100, write_with_av("ipod", "aac")),
    "webm-opus": (".webm", 48000, write_with_av("webm", "libopus")),
}


@pytest.mark.parametrize("name", FORMATS)
def test_container_decodes_from_path_and_bytes(tmp_path: Path, name: str) -> None:
    suffix, rate, write = FORMATS[name]
    seconds = 1.5
    path = tmp_path / f"clip{suffix}"
    write(path, tone_and_chirp(seconds, rate), rate)

    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())

    np.testing.assert_array_equal(from_path, from_bytes)
    assert from_path.dtype == np.float32 and from_path.ndim == 1 and from_path.flags.c_contiguous
    # AAC pads to whole 1024-sample frames; the other decoders trim their padding exactly.
    assert abs(len(from_path) / SAMPLE_RATE - seconds) < 0.02
    correlation, lag = aligned_correlation(from_path, tone_and_chirp(seconds, SAMPLE_RATE), max_lag=800)
    assert correlation > 0.9
    assert abs(lag) <= 16  # encoder delay is removed on decoding (within 1 ms)
    assert abs(peak_frequency(from_path) - TONE_HZ) < 2.0


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_resamples_to_16k_keeping_frequency(rate: int) -> None:
    samples = tone(700.0, 1.0, rate)
    wav = io.BytesIO()
    sf.write(wav, samples, rate, format="WAV", subtype="FLOAT")

    for output in (load_audio((samples, rate)), load_audio(wav.getvalue())):
        assert abs(len(output) - SAMPLE_RATE) <= 1
        assert abs(peak_frequency(output) - 700.0) < 2.0
        assert 0.28 < np.abs(output[1000:-1000]).max() < 0.32


def test_16k_float_input_is_returned_unchanged() -> None:
    samples = np.random.default_rng(0).uniform(-0.9, 0.9, 4000).astype(np.float32)
    np.testing.assert_array_equal(load_audio(samples), samples)
    np.testing.assert_array_equal(load_audio((samples, 16000)), samples)


def test_bare_array_takes_its_rate_from_the_argument() -> None:
    output = load_audio(tone(440.0, 1.0, 8000), sample_rate=8000)
    assert abs(len(output) - 2 * 8000) <= 1
    assert abs(peak_frequency(output) - 440.0) < 2.0


def stereo_440_left_1000_right(rate: int) -> np.ndarray:
    return np.stack([tone(440.0, 1.0, rate), tone(1000.0, 1.0, rate, amplitude=0.5)], axis=1)


def test_stereo_array_downmix_is_the_channel_mean_and_channel_picks_one() -> None:
    stereo = stereo_440_left_1000_right(SAMPLE_RATE)
    np.testing.assert_allclose(load_audio((stereo, SAMPLE_RATE)), stereo.mean(axis=1), atol=1e-7)
    np.testing.assert_array_equal(load_audio((stereo, SAMPLE_RATE), channel=0), stereo[:, 0])
    np.testing.assert_array_equal(load_audio((stereo, SAMPLE_RATE), channel=1), stereo[:, 1])


# wav is decoded by soundfile as (frames, channels), m4a by PyAV as (channels, frames).
@pytest.mark.parametrize("name", ["wav", "m4a-aac"])
def test_stereo_file_channels_are_the_same_whichever_decoder(tmp_path: Path, name: str) -> None:
    suffix, rate, write = FORMATS[name]
    path = tmp_path / f"stereo{suffix}"
    write(path, stereo_440_left_1000_right(rate), rate)

    left, right = load_audio(path, channel=0), load_audio(path, channel=1)
    assert abs(peak_frequency(left) - 440.0) < 2.0
    assert abs(peak_frequency(right) - 1000.0) < 2.0
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-4)
    with pytest.raises(AudioError, match=r"channel 2 is out of range: audio has 2 channel"):
        load_audio(path, channel=2)


def test_channel_out_of_range_on_mono_names_the_channel_count() -> None:
    with pytest.raises(AudioError, match=r"channel 1 is out of range: audio has 1 channel"):
        load_audio(tone(440.0, 0.1, SAMPLE_RATE), channel=1)
    with pytest.raises(AudioError, match=r"channel -1 is out of range"):
        load_audio(stereo_440_left_1000_right(SAMPLE_RATE), channel=-1)


def test_integer_pcm_is_scaled_to_unit_range() -> None:
    int16 = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_allclose(load_audio(int16), [0.0, 0.5, -1.0, 32767 / 32768])
    uint8 = np.array([0, 128, 192], dtype=np.uint8)
    np.testing.assert_allclose(load_audio(uint8), [-1.0, 0.0, 0.5])
    int32 = np.array([[2**30, -(2**30)]], dtype=np.int32).repeat(3, axis=0)
    np.testing.assert_allclose(load_audio(int32, channel=1), [-0.5] * 3)


def test_out_of_range_float_audio_is_divided_by_its_peak() -> None:
    samples = np.array([0.5, -4.0, 2.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(load_audio(samples), samples / 4.0)
    np.testing.assert_array_equal(load_audio(np.array([1.0, -1.0], dtype=np.float64)), [1.0, -1.0])


def test_path_like_str_and_bytearray_sources(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, tone(440.0, 0.5, SAMPLE_RATE), SAMPLE_RATE, subtype="FLOAT")
    expected = tone(440.0, 0.5, SAMPLE_RATE)
    for source in (path, str(path), bytearray(path.read_bytes())):
        np.testing.assert_array_equal(load_audio(source), expected)


def test_corrupt_bytes_cannot_be_decoded() -> None:
    with pytest.raises(AudioError, match=r"could not decode audio: Invalid data found"):
        load_audio(np.random.default_rng(1).bytes(4000))


def test_wav_with_a_broken_header_cannot_be_decoded() -> None:
    wav = io.BytesIO()
    sf.write(wav, tone(440.0, 0.5, SAMPLE_RATE), SAMPLE_RATE, format="WAV")
    broken = np.random.default_rng(2).bytes(64) + wav.getvalue()[64:]
    with pytest.raises(AudioError, match=r"could not decode audio"):
        load_audio(broken)


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"audio file is empty \(0 bytes\)"):
        load_audio(path)
    with pytest.raises(AudioError, match=r"audio bytes are empty \(0 bytes\)"):
        load_audio(b"")


def test_audio_with_zero_samples(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    assert path.stat().st_size > 0
    for source in (path, path.read_bytes(), np.zeros(0, np.float32), (np.zeros((0, 2), np.int16), 8000)):
        with pytest.raises(AudioError, match=r"audio is empty \(0 samples\)"):
            load_audio(source)


@pytest.mark.parametrize(
    ("container", "codec", "suffix"), [("ipod", "aac", ".m4a"), ("webm", "libopus", ".webm")]
)
def test_header_only_container_through_pyav(tmp_path: Path, container: str, codec: str, suffix: str) -> None:
    path = tmp_path / f"header_only{suffix}"
    with av.open(str(path), "w", format=container) as output:
        output.add_stream(codec, rate=48000, layout="mono")
        output.start_encoding()
    with pytest.raises(
        AudioError, match=r"could not decode audio: (the input has no audio stream|End of file)"
    ):
        load_audio(path)


def test_text_file_is_reported_as_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("These are meeting notes, not a recording. Ünïcode too.\n" * 20)
    with pytest.raises(AudioError, match=r"could not decode audio: the input looks like text, not audio"):
        load_audio(path)
    with pytest.raises(AudioError, match=r"looks like text"):
        load_audio(path.read_bytes())


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"audio file not found: .*missing\.wav"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match=r"audio path is not a file"):
        load_audio(tmp_path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad_value: float) -> None:
    samples = tone(440.0, 0.1, SAMPLE_RATE)
    samples[100] = bad_value
    with pytest.raises(AudioError, match=r"NaN or infinite"):
        load_audio(samples)


@pytest.mark.parametrize("rate", [0, -16000, float("nan"), "16000"])
def test_bad_sample_rate(rate: object) -> None:
    with pytest.raises(AudioError, match=r"sample rate must be a positive number"):
        load_audio((tone(440.0, 0.1, SAMPLE_RATE), rate))
    with pytest.raises(AudioError, match=r"sample rate must be a positive number"):
        load_audio(tone(440.0, 0.1, SAMPLE_RATE), sample_rate=rate)


@pytest.mark.parametrize("shape", [(), (2, 100, 2)])
def test_wrong_array_dimensions(shape: tuple[int, ...]) -> None:
    with pytest.raises(AudioError, match=r"must be 1-D \(frames,\) or 2-D \(frames, channels\)"):
        load_audio(np.zeros(shape, np.float32))


def test_an_array_shaped_channels_first_is_refused_not_averaged_into_silence() -> None:
    stereo = stereo_440_left_1000_right(SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"shape \(2, 16000\) has more channels than frames.*array\.T"):
        load_audio((stereo.T.copy(), SAMPLE_RATE))
    np.testing.assert_allclose(load_audio((stereo.T.copy().T, SAMPLE_RATE)), stereo.mean(axis=1), atol=1e-7)


def test_unsupported_inputs() -> None:
    with pytest.raises(AudioError, match=r"unsupported audio sample dtype: complex64"):
        load_audio(np.zeros(100, np.complex64))
    with pytest.raises(AudioError, match=r"unsupported audio input type: int"):
        load_audio(42)  # type: ignore[arg-type]
    with pytest.raises(AudioError, match=r"audio tuple must be \(array, sample_rate\)"):
        load_audio((np.zeros(100), 16000, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["wav", "ogg-opus"])  # the header path (soundfile) and the decode path (PyAV)
def test_audio_longer_than_max_seconds_is_refused(tmp_path: Path, name: str) -> None:
    suffix, rate, write = FORMATS[name]
    path = tmp_path / f"clip{suffix}"
    write(path, tone(TONE_HZ, 3.0, rate), rate)
    with pytest.raises(AudioTooLongError, match="longer than the 2 s allowed"):
        load_audio(path.read_bytes(), max_seconds=2)
    assert abs(len(load_audio(path.read_bytes(), max_seconds=4)) / SAMPLE_RATE - 3.0) < 0.02
    with pytest.raises(AudioTooLongError):
        load_audio((tone(TONE_HZ, 3.0, rate), rate), max_seconds=2.5)


def test_a_clip_that_resamples_to_nothing_is_an_audio_error(tmp_path: Path) -> None:
    path = tmp_path / "one-frame.wav"
    sf.write(path, np.zeros(1, dtype=np.float32), 48000)
    with pytest.raises(AudioError, match="empty after resampling 48000 Hz"):
        load_audio(path.read_bytes())


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_absurd_sample_rates_are_refused_before_any_resampling() -> None:
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 10_800).astype(np.float32)
    tiny = wav_bytes(noise, 1)  # 21.6 KB that would resample to 3 hours
    assert len(tiny) < 22_000
    decoded = []
    with pytest.raises(AudioError, match="sample rate of 1 Hz.*between 1000 Hz and 768000 Hz"):
        load_audio(tiny, on_decoded=decoded.append)
    assert decoded == []
    for rate in (999, 800_000):
        with pytest.raises(AudioError, match="sample rate"):
            load_audio((noise, rate))
    assert len(load_audio((noise, 1000))) == 10_800 * 16


def test_decoding_reports_its_output_as_it_goes_and_stops_at_the_limit(tmp_path: Path) -> None:
    seconds = []
    samples = load_audio(wav_bytes(tone(440, 9.5, 44100), 44100), on_decoded=seconds.append)
    assert len(seconds) > 2 and sum(seconds) == pytest.approx(len(samples) / SAMPLE_RATE)
    # ten minutes of a quiet tone as Opus in WebM, which only PyAV reads, frame by frame: the limit stops the
    # decoding after about a minute of output, whatever the whole would be
    path = tmp_path / "long.webm"
    write_with_av("webm", "libopus")(path, tone(440, 600, 48000, amplitude=0.01), 48000)
    seconds.clear()
    with pytest.raises(AudioTooLongError):
        load_audio(path.read_bytes(), max_seconds=60, on_decoded=seconds.append)
    assert 59 <= sum(seconds) <= 61


def test_on_decoded_can_stop_the_decoding() -> None:
    class Enough(Exception):
        pass

    def stop_after_two_seconds(seconds: float, total: list[float] = []) -> None:  # noqa: B006
        total.append(seconds)
        if sum(total) > 2:
            raise Enough

    with pytest.raises(Enough):
        load_audio(wav_bytes(tone(440, 30, 16000), 16000), on_decoded=stop_after_two_seconds)
