"""`make gpu-check` here, without a GPU: it stops at once and says why; its pieces that run before the GPU is
touched work (the source tree laid out as the `qasr` package, the engine without the audio libraries the GPU image
lacks); each part fits its 8 minutes."""

import subprocess
import sys
from pathlib import Path

import pytest

from qasr.benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_without_cuda_it_stops_at_once_and_says_why() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "1"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "gpu-check: no CUDA device here (torch.cuda.is_available() is False)" in done.stderr


def test_qasr_with_its_subpackages_linked_in_is_the_package(tmp_path: Path) -> None:
    """What gpu-check does to the tree's qasr/ folder, done to a copy of it: run from the folder above, `import
    qasr` takes that folder, and its subpackages are the source folders."""
    package = tmp_path / "qasr"
    package.mkdir()
    for module in (ROOT / "qasr").glob("*.py"):
        (package / module.name).write_bytes(module.read_bytes())
    gpu_check.link_subpackages(package)
    gpu_check.link_subpackages(package)  # again, over its own links
    code = ("import qasr, qasr.engine.config, qasr.kernels.reference.norms, qasr.benchmarks.report\n"
            "print(qasr.__file__); print(qasr.engine.config.__file__); print(qasr.benchmarks.report.__file__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root_init, config, report = done.stdout.split()
    assert root_init == str(package / "__init__.py")  # the copy, not the installed package
    assert config == str(package / "engine" / "config.py")
    assert Path(config).resolve() == ROOT / "engine" / "config.py"
    assert Path(report).resolve().parent == ROOT / "benchmarks"


def test_the_engine_runs_without_the_audio_libraries_the_gpu_image_lacks() -> None:
    code = ("import sys\nsys.modules.update(av=None, soundfile=None, soxr=None, jiwer=None)  # any import fails\n"
            "import numpy as np\nfrom qasr.engine import ASR\n"
            "[result] = ASR(None, max_num_seqs=2).transcribe([np.zeros(16000, dtype=np.float32)])\n"
            "print(type(result.text).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "str", done.stderr[-2000:]


def test_the_gpu_tests_and_benchmarks_load_without_the_libraries_the_gpu_image_lacks() -> None:
    """A GPU test file that cannot be collected there (test_aligner.py reached jiwer and soundfile through
    training/) or a benchmark that cannot be imported (bench step reached jiwer) would cost a GPU window."""
    code = ("import sys\nsys.modules.update(av=None, soundfile=None, soxr=None, jiwer=None)  # any import fails\n"
            "import pytest\n"
            f"collected = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
            f"*{list(gpu_check.GPU_TESTS)!r}])\n"
            "from qasr.cli import main\n"
            "for command in ('kernels', 'step', 'throughput', 'tune-attention'):\n"
            "    try:\n"
            "        main(['bench', command, '--help'])\n"
            "    except SystemExit as done:\n"
            "        assert done.code == 0, command\n"
            "sys.exit(collected)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


@pytest.mark.parametrize("part", ["1", "2", "3", "tune"])
def test_each_part_fits_its_eight_minutes(part: str, tmp_path: Path) -> None:
    steps = gpu_check.steps(part, tmp_path)
    assert steps and sum(limit for _, _, limit in steps) <= 8 * 60 - 30  # room for the install and nvidia-smi
    for path in gpu_check.GPU_TESTS:
        assert "pytest.mark.gpu" in (ROOT / path).read_text(), path


@pytest.mark.parametrize("part", ["1", "2", "3", "tune"])
def test_every_qasr_command_of_a_part_parses(part: str, tmp_path: Path) -> None:
    """A flag the CLI does not know would fail its step on the GPU machine, minutes into the window."""
    from qasr.cli import build_parser

    commands = [command[3:] for _, command, _ in gpu_check.steps(part, tmp_path) if command[1:3] == ["-m", "qasr"]]
    assert commands
    for command in commands:
        build_parser().parse_args(command)  # exits on an unknown flag or value
