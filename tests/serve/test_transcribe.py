import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from qasr.cli import main
from qasr.engine.outputs import Segment, Transcription
from qasr.serve.formats import render


@pytest.fixture(scope="module")
def setup(checkpoint_root: Path, tmp_path_factory: pytest.TempPathFactory, shapes, write_checkpoint,
          speech_like) -> tuple[Path, list[Path]]:
    checkpoint = write_checkpoint(checkpoint_root / "cli-original", shapes[1], layout="original", seed=5)
    audio_dir = tmp_path_factory.mktemp("audio")
    files = []
    for i, seconds in enumerate((1.2, 14.0)):
        path = audio_dir / f"clip{i}.flac"
        sf.write(path, speech_like(seconds, seed=i), 16000)
        files.append(path)
    return checkpoint, files


def test_transcribe_json_matches_the_python_api(setup, capsys) -> None:
    checkpoint, files = setup
    from qasr.engine import ASR, SamplingParams

    expected = ASR(str(checkpoint), max_piece_seconds=10).transcribe(
        [str(f) for f in files], sampling_params=SamplingParams(max_tokens=12))
    code = main(["transcribe", *map(str, files), "--model", str(checkpoint), "--format", "json", "--quiet",
                 "--max-tokens", "12", "--max-piece-seconds", "10"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == [r.text for r in expected]
    assert len(lines[1]["segments"]) == 2 and lines[1]["segments"][1]["start"] > 0
    assert lines[1]["duration"] == pytest.approx(14.0)


def test_transcribe_writes_srt_files_and_the_console_script_runs(setup, tmp_path) -> None:
    checkpoint, files = setup
    out = subprocess.run(
        [str(Path(sys.executable).parent / "qasr"), "transcribe", str(files[1]), "--model", str(checkpoint),
         "--format", "srt", "--output-dir", str(tmp_path), "--max-tokens", "8", "--max-piece-seconds", "10",
         "--language", "en"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    srt = (tmp_path / "clip1.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:")


def test_bad_input_is_a_clear_error_not_a_traceback(setup, tmp_path, capsys) -> None:
    checkpoint, _ = setup
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not audio")
    assert main(["transcribe", str(text_file), "--model", str(checkpoint), "--quiet"]) == 2
    assert "could not decode audio" in capsys.readouterr().err
    assert main(["transcribe", str(text_file), "--model", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "qasr: error:" in capsys.readouterr().err


def test_a_file_that_cannot_be_decoded_is_named_and_the_others_still_go_through(setup, tmp_path, capsys) -> None:
    checkpoint, files = setup
    notes = tmp_path / "notes.wav"
    notes.write_text("this is not audio")
    out = tmp_path / "out"
    code = main(["transcribe", str(files[0]), str(notes), "--model", str(checkpoint), "--quiet", "--max-tokens", "4",
                 "--output-dir", str(out)])
    assert code == 1  # something failed, and a script can tell
    assert f"qasr transcribe: {notes}: could not decode audio" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["clip0.txt"]


def test_many_files_run_in_windows_of_audio_each_written_before_the_next_is_decoded(setup, tmp_path, capsys,
                                                                                    monkeypatch) -> None:
    from qasr.engine import ASR
    from qasr.serve import transcribe

    checkpoint, files = setup
    argv = ["transcribe", str(files[0]), str(files[1]), "--model", str(checkpoint), "--quiet", "--max-tokens", "4",
            "--max-piece-seconds", "10", "--format", "json"]
    assert main(argv) == 0
    together = capsys.readouterr().out
    calls: list[int] = []
    original = ASR.transcribe
    monkeypatch.setattr(ASR, "transcribe", lambda self, audio, **kw: calls.append(len(audio)) or original(
        self, audio, **kw))
    monkeypatch.setattr(transcribe, "WINDOW_SECONDS", 1.0)  # every file fills a window: two windows of one
    assert main(argv) == 0
    assert calls == [1, 1] and capsys.readouterr().out == together


def test_output_mistakes_are_refused_before_the_model_loads(setup, tmp_path, capsys) -> None:
    _, files = setup
    twin = tmp_path / "elsewhere" / files[0].name
    twin.parent.mkdir()
    twin.write_bytes(files[0].read_bytes())
    nowhere = str(tmp_path / "no-model")  # loading it would fail: the mistakes below are found first
    assert main(["transcribe", str(files[0]), str(twin), "--model", nowhere, "--output-dir", str(tmp_path / "o")]) == 2
    assert f"{files[0]} and {twin} would all be written to {tmp_path / 'o' / 'clip0.txt'}" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["transcribe", str(files[0]), "--model", nowhere, "--output-dir", str(a_file)]) == 2
    assert f"qasr: error: --output-dir {a_file}: File exists" in capsys.readouterr().err
    assert main(["transcribe", str(tmp_path / "gone.wav"), "--model", nowhere]) == 2
    err = capsys.readouterr().err
    assert "gone.wav: audio file not found" in err and "no input could be decoded" in err


def test_a_closed_pipe_ends_the_command_quietly(setup) -> None:
    checkpoint, files = setup
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "qasr"), "transcribe", str(files[1]), str(files[0]), "--model",
         str(checkpoint), "--format", "verbose_json", "--quiet", "--max-tokens", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `| head -c 0`: the reader is gone before anything is written
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1 and b"Traceback" not in err, err.decode()


def test_word_timestamps_use_the_demo_models_own_aligner(capsys) -> None:
    from qasr.benchmarks.heldout import HELDOUT, read_manifest

    row = next(row for row in read_manifest() if row["kind"] == "sentence")
    assert main(["transcribe", str(HELDOUT / row["file"]), "--word-timestamps", "--format", "json", "--quiet"]) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert [word["word"] for word in words] == [word.strip(".,?!") for word in row["text"].split()]
    assert all(0 <= word["start"] <= word["end"] <= row["seconds"] + 0.5 for word in words)


def test_subtitle_formats() -> None:
    result = Transcription(text="hello there general", language="English", token_ids=[1, 2], duration=3725.5,
                           segments=[Segment(0.0, 1.5, "hello there"), Segment(1.5, 3725.5, "general"),
                                     Segment(3725.5, 3725.5, "")], finish_reason="stop")
    assert render(result, "srt") == ("1\n00:00:00,000 --> 00:00:01,500\nhello there\n\n"
                                     "2\n00:00:01,500 --> 01:02:05,500\ngeneral\n\n")
    assert render(result, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello there\n")
    assert render(result, "text") == "hello there general\n"
    assert json.loads(render(result, "json"))["segments"][1]["end"] == 3725.5
    verbose = json.loads(render(result, "verbose_json", temperature=0.2))
    assert (verbose["task"], verbose["language"], verbose["text"]) == ("transcribe", "english", result.text)
    assert [s["seek"] for s in verbose["segments"]] == [0, 150, 372550]
    assert verbose["segments"][1]["temperature"] == 0.2 and verbose["usage"] == {"type": "duration", "seconds": 3726}
    with pytest.raises(ValueError):
        render(result, "docx")


def test_a_task_db_password_never_reaches_the_startup_line() -> None:
    from qasr.serve.cli import without_password as _without_password

    assert _without_password("postgresql://qasr:s3cret@db:5432/tasks") == "postgresql://qasr:***@db:5432/tasks"
    assert _without_password("postgresql://qasr@db/tasks") == "postgresql://qasr@db/tasks"
    assert _without_password(".qasr/tasks.sqlite3") == ".qasr/tasks.sqlite3"


def test_cue_text_cannot_break_a_cue() -> None:
    result = Transcription(text="", language=None, token_ids=[], duration=4.0, finish_reason="stop",
                           segments=[Segment(0.0, 2.0, "a --> b\n\n2\nsmall & <b>bold</b>"), Segment(2.0, 4.0, "end")])
    srt = render(result, "srt")
    assert srt.split("\n\n") == ["1\n00:00:00,000 --> 00:00:02,000\na -> b 2 small & <b>bold</b>",
                                  "2\n00:00:02,000 --> 00:00:04,000\nend", ""]
    vtt = render(result, "vtt")
    assert "a -&gt; b 2 small &amp; &lt;b&gt;bold&lt;/b&gt;\n" in vtt and vtt.count("-->") == 2
