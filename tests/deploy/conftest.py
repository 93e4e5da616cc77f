"""Fixtures for the deployment files' tests: the validating tools (`tool`), the parsed Dockerfile
(`dockerfile_stages`), the flags `qasr serve` takes (`serve_flags`), and what the server's /metrics exports
(`exported_series`, `exported_labels`) with a PromQL name extractor (`promql_metric_names`).

`exposition` is the /metrics text of serve.metrics.Metrics over a fake engine and an empty in-memory task store; the
dashboard's and the alerts' tests check their queries against it."""

import dataclasses
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from qasr.engine.config import EngineConfig
from qasr.serve.budget import AudioBudget
from qasr.serve.drain import Drain
from qasr.serve.metrics import Metrics
from qasr.serve.options import ServerOptions
from qasr.serve.task_store import TaskStore

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
NAME = re.compile(r"(?<![A-Za-z0-9_:])qasr_[A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?")


def find_tool(name: str, install: str) -> str:
    """The executable `name` on PATH or beside this Python (the venv's bin); a failure saying how to install it."""
    for candidate in (shutil.which(name), Path(sys.executable).parent / name):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"{name} is required to validate the deployment files and was not found: {install}", pytrace=False)


@pytest.fixture(scope="session")
def tool() -> Callable[[str, str], str]:
    """`tool(name, install)`: the path of a validating tool; the test fails (never skips) when it is missing, with
    `install` saying how to get it."""
    return find_tool


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: `\\` continuations joined, comment lines (inside continuations too) and
    blank lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            keyword, _, rest = whole.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


@pytest.fixture(scope="session")
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """deploy/Dockerfile's build stages, each a list of (INSTRUCTION, arguments) starting with its FROM."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, f"{instruction[0]} before the first FROM"
        stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="session")
def serve_flags() -> set[str]:
    """Every flag of `qasr serve`: a field of ServerOptions or EngineConfig, dashed (and --no-X for a bool)."""
    flags = set()
    for cls in (ServerOptions, EngineConfig):
        for field in dataclasses.fields(cls):
            name = (field.metadata.get("flag") or field.name).replace("_", "-")
            flags.add("--" + name)
            if field.type in (bool, "bool"):
                flags.add("--no-" + name)
    return flags


@pytest.fixture(scope="session")
def exposition() -> str:
    """The /metrics text of a fresh app over a fake engine and an empty in-memory task store."""
    scheduler = SimpleNamespace(num_running=3, num_waiting=5, kv_usage=0.25)
    store = TaskStore(":memory:")
    try:
        llm = SimpleNamespace(core=SimpleNamespace(scheduler=scheduler), num_running_requests=2, num_waiting_requests=1)
        metrics = Metrics(SimpleNamespace(engine=llm, is_running=True), store, AudioBudget(60.0), Drain())
        return metrics.render().decode()
    finally:
        store.close()


@pytest.fixture(scope="session")
def exported_series(exposition: str) -> dict[str, str]:
    """Every series name the exposition carries -> its family's type, from the `# TYPE` lines (so labelled metrics
    with nothing observed count too), expanded as prometheus-client exposes each type."""
    series: dict[str, str] = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                series[name if name.endswith("_total") else name + "_total"] = "counter"
            elif kind in ("histogram", "summary"):
                series.update({name + suffix: kind for suffix in ("_sum", "_count")})
                series[name + "_bucket" if kind == "histogram" else name] = kind
            else:
                series[name] = kind
    return series


@pytest.fixture(scope="session")
def exported_labels(exposition: str) -> dict[str, dict[str, set[str]]]:
    """Series name -> label name -> the values its samples carry (only series that have samples)."""
    out: dict[str, dict[str, set[str]]] = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name, labels = SAMPLE.match(line).groups()
            seen = out.setdefault(name, {})
            for label, value in re.findall(r'([A-Za-z_]\w*)="([^"]*)"', labels or ""):
                seen.setdefault(label, set()).add(value)
    return out


def promql_metric_names(expr: str) -> set[str]:
    """The qasr_* names a PromQL expression selects (label values and other strings left out)."""
    return set(NAME.findall(STRING.sub('""', expr)))


@pytest.fixture(name="promql_metric_names", scope="session")
def fixture_promql_metric_names() -> Callable[[str], set[str]]:
    """`promql_metric_names(expr)`: the set of qasr_* series names in a PromQL expression."""
    return promql_metric_names
