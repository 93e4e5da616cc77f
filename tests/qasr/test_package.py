"""The wheel as users install it: one top-level package, qasr, that coexists with another distribution owning a
top-level `kernels` module (Hugging Face's `kernels` is one), and `qasr transcribe` works from the installed copy."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "benchmarks" / "data" / "heldout"
STAND_IN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "kernels-stand-in"
version = "0.0.1"

[tool.setuptools]
packages = ["kernels"]
"""
STAND_IN_OWNER = "kernels-stand-in"


def build_wheel(project: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(project), "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(out)], check=True, capture_output=True, text=True, timeout=300)
    [wheel] = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel . --no-deps` of this repository's files (tracked, or new and not ignored), copied first: a build
    in the work tree would reuse its build/ folder, where files deleted from the source live on."""
    source = tmp_path_factory.mktemp("source")
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             check=True, capture_output=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        if (ROOT / name).is_file():  # a deleted file stays listed until the deletion is staged
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    return build_wheel(source, tmp_path_factory.mktemp("qasr-wheel"))


def test_the_wheel_holds_only_qasr_and_its_metadata(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"qasr", "qasr-0.1.0.dist-info"}
    modules = {name for name in names if name.endswith(".py")}
    for expected in ("qasr/__init__.py", "qasr/cli.py", "qasr/engine/engine_core.py", "qasr/kernels/model_ops.py",
                     "qasr/kernels/reference/paged_attention.py", "qasr/kernels/triton/paged_attention.py",
                     "qasr/scheduler/scheduler.py", "qasr/serve/app.py", "qasr/benchmarks/throughput.py"):
        assert expected in modules, expected
    assert not any(name.startswith("qasr/training") for name in names)  # the demo model's training stays home
    assert "qasr/engine/assets/demo-model/model.safetensors" in names  # the default model
    assert "qasr/benchmarks/data/heldout/manifest.jsonl" in names  # `qasr bench serve`'s default clips
    top_level = zipfile.ZipFile(wheel).read("qasr-0.1.0.dist-info/top_level.txt").decode().split()
    assert top_level == ["qasr"]


def test_qasr_installs_beside_a_distribution_that_owns_kernels(wheel: Path, tmp_path: Path) -> None:
    stand_in = tmp_path / "stand-in"
    (stand_in / "kernels").mkdir(parents=True)
    (stand_in / "pyproject.toml").write_text(STAND_IN_PYPROJECT)
    (stand_in / "kernels" / "__init__.py").write_text(f"OWNER = {STAND_IN_OWNER!r}\n")
    stand_in_wheel = build_wheel(stand_in, tmp_path / "stand-in-wheel")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # pip runs inside the scratch venv, which sees nothing else yet: both land in its own site-packages
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(stand_in_wheel), str(wheel)], check=True, capture_output=True, text=True,
                   timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    assert sorted(p.name for p in (site / "kernels").iterdir() if p.suffix == ".py") == ["__init__.py"]
    # then qasr's dependencies (torch, transformers, ...) from this environment, after the scratch venv's own
    # packages; this environment's editable qasr stays out (its .pth file is not processed from there)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["HF_HUB_OFFLINE"] = "1"
    where = subprocess.run([str(python), "-c", "import kernels, qasr; print(kernels.OWNER); print(qasr.__file__)"],
                           check=True, capture_output=True, text=True, env=env, cwd=tmp_path).stdout.split()
    assert where == [STAND_IN_OWNER, str(site / "qasr" / "__init__.py")]

    row = json.loads((HELDOUT / "manifest.jsonl").read_text().splitlines()[0])
    run = subprocess.run([str(venv / "bin" / "qasr"), "transcribe", str(HELDOUT / row["file"]), "--format", "json",
                          "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["text"] == row["text"]
