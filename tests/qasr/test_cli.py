"""The `qasr` command: it answers --help without importing torch, and every engine and server option is a flag
generated from its config dataclass."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from qasr.cli import build_parser
from qasr.engine.config import EngineConfig
from qasr.serve.options import ServerOptions

HEAVY = ("torch", "numpy", "transformers", "triton", "aiohttp")


def imported_modules(*argv: str) -> set[str]:
    """The modules `python -X importtime -m qasr ARGV` imports (its stderr lists every module imported by an import
    statement; the subcommand's own module, loaded by importlib.import_module, is not listed, what it imports is)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "qasr", *argv], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: qasr" in run.stdout
    return {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}


def loaded_modules(*argv: str) -> set[str]:
    """Every module in sys.modules after `qasr ARGV` has run in a fresh interpreter."""
    code = ("import sys\nfrom qasr.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sys.modules), file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "usage: qasr" in run.stdout, run.stderr[-2000:]
    return set(run.stderr.split())


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["transcribe", "--help"], ["bench", "--help"]],
                         ids=" ".join)
def test_help_imports_no_torch(argv: list[str]) -> None:
    listed = imported_modules(*argv)
    assert "qasr.cli" in listed  # the listing is real
    for modules in (listed, loaded_modules(*argv)):
        heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
        assert not heavy, f"qasr {' '.join(argv)} imported {heavy[:10]}"


def test_a_subcommand_imports_only_its_own_module() -> None:
    modules = loaded_modules("serve", "--help")
    assert "qasr.serve.cli" in modules
    assert not any(m.startswith(("qasr.benchmarks", "qasr.serve.transcribe")) for m in modules)
    modules = loaded_modules("bench", "throughput", "--help")
    assert "qasr.benchmarks.throughput" in modules and "qasr.benchmarks.serving" not in modules


def help_text(*argv: str) -> str:
    run = subprocess.run([sys.executable, "-m", "qasr", *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def flag(field: dataclasses.Field) -> str:
    return "--" + (field.metadata.get("flag") or field.name).replace("_", "-")


def test_every_option_is_a_flag_with_help() -> None:
    serve, transcribe = help_text("serve"), help_text("transcribe")
    for field in dataclasses.fields(EngineConfig):
        assert field.metadata.get("help"), f"EngineConfig.{field.name} has no help text"
        assert flag(field) in serve and flag(field) in transcribe
    for field in dataclasses.fields(ServerOptions):
        assert field.metadata.get("help"), f"ServerOptions.{field.name} has no help text"
        assert flag(field) in serve
        assert flag(field) not in transcribe


def test_flags_round_trip_into_the_configs() -> None:
    args = build_parser().parse_args([
        "serve", "--port", "0", "--served-model-name", "a", "b", "--allow-private-urls", "--max-upload-mb", "2.5",
        "--max-num-seqs", "7", "--no-enable-prefix-caching", "--kv-cache-dtype", "fp8", "--max-model-len", "999"])
    options, config = ServerOptions.from_cli_args(args), EngineConfig.from_cli_args(args)
    assert options == ServerOptions(port=0, served_model_names=["a", "b"], allow_private_urls=True, max_upload_mb=2.5)
    assert config == EngineConfig(max_num_seqs=7, enable_prefix_caching=False, kv_cache_dtype="fp8",
                                  max_model_len=999)
    defaults = build_parser().parse_args(["transcribe", "a.wav"])
    assert EngineConfig.from_cli_args(defaults) == EngineConfig()


def test_repeatable_flags_add_to_their_environment_variable_and_secrets_stay_hidden(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QASR_API_KEYS", " sk-env-1, sk-env-2,")
    monkeypatch.setenv("QASR_ALLOW_URL_HOSTS", "store.internal")
    args = build_parser().parse_args(["serve", "--api-key", "sk-flag-1", "--api-key", "sk-flag-2",
                                      "--allow-url-host", "10.0.0.5"])
    options = ServerOptions.from_cli_args(args)
    assert options.api_keys == ["sk-env-1", "sk-env-2", "sk-flag-1", "sk-flag-2"]
    assert options.allow_url_hosts == ["store.internal", "10.0.0.5"]
    assert "sk-" not in repr(options) and "store.internal" in repr(options)
    text = help_text("serve")  # the environment is inherited: a key there must not show in --help either
    assert "QASR_API_KEYS" in text and "sk-env" not in text and "store.internal" in text
    monkeypatch.delenv("QASR_API_KEYS")
    assert ServerOptions.from_cli_args(build_parser().parse_args(["serve"])).api_keys == []


def test_excluded_flags_come_from_the_caller() -> None:
    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser, exclude=("model", "max_num_seqs"))
    assert "--model" not in parser.format_help() and "--max-num-seqs" not in parser.format_help()
    config = EngineConfig.from_cli_args(parser.parse_args(["--block-size", "32"]), model="m", max_num_seqs=3)
    assert (config.model, config.max_num_seqs, config.block_size) == ("m", 3, 32)


def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture) -> None:
    for argv in (["serve", "--kv-cache-dtype", "fp4"], ["serve", "--port", "eighty"], ["bench", "nope"], ["nope"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "invalid choice" in error or "invalid int value" in error
