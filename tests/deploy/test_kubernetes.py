"""deploy/k8s/: every manifest passes kubernetes-validate (strict schemas of Kubernetes 1.30, bundled with the tool, so
offline), and the objects fit together and fit the server: the Service and the PodDisruptionBudget select the
Deployment's pods, probes hit /health on the container's port, the grace period outlasts the drain, every secretKeyRef
names a key of the Secret, the container's arguments are a command line `qasr serve` accepts, the autoscaler's metric
is one the server exports and the adapter rule serves, the scrape config keeps those pods and gives the adapter the
labels it maps, and promtool accepts that config with deploy/prometheus/alerts.yml as its rules."""

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from qasr.engine.config import EngineConfig
from qasr.serve.cli import add_arguments
from qasr.serve.options import ServerOptions

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
MANIFESTS = sorted(K8S.glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are meant for
NAMESPACE = "qasr"
VALIDATE_INSTALL = ("run `make setup` (the test extra installs kubernetes-validate), or "
                    "`.venv/bin/pip install kubernetes-validate`")
PROMTOOL_INSTALL = "run `make setup`, or `apt-get install prometheus` (Debian's package ships promtool)"

Objects = dict[str, dict]
Stages = list[list[tuple[str, str]]]
Tool = Callable[[str, str], str]


@pytest.fixture(scope="module")
def objects() -> Objects:
    """Every manifest's objects by kind (one of each kind, ConfigMaps by name)."""
    out: Objects = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = doc["metadata"]["name"] if doc["kind"] == "ConfigMap" else doc["kind"]
                assert key not in out, f"two {key} objects"
                out[key] = doc
    return out


@pytest.fixture(scope="module")
def pod(objects: Objects) -> dict:
    return objects["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod: dict) -> dict:
    [container] = pod["spec"]["containers"]
    return container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def prometheus_config(objects: Objects) -> dict:
    return yaml.safe_load(objects["prometheus-qasr"]["data"]["prometheus.yml"])


# ---------------------------------------------------------------------------------------------------- the tool

@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_validate(tool: Tool, path: Path) -> None:
    validate = tool("kubernetes-validate", VALIDATE_INSTALL)
    run = subprocess.run([validate, "--kubernetes-version", KUBERNETES_VERSION, "--strict", str(path)],
                         capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    # a kind without a schema is only a WARN to the tool, with exit status 0: here it is a failure
    assert run.returncode == 0 and not re.search(r"^(ERROR|WARN|FATAL)", output, re.MULTILINE), output
    assert len(re.findall(r"^INFO .* passed for resource ", output, re.MULTILINE)) == len(documents), output


def test_manifests_exist_and_share_a_namespace(objects: Objects) -> None:
    assert MANIFESTS and {"Namespace", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                          "HorizontalPodAutoscaler", "prometheus-adapter-qasr", "prometheus-qasr"} <= set(objects)
    assert objects["Namespace"]["metadata"]["name"] == NAMESPACE
    for key, obj in objects.items():
        if key != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{key} is not in the namespace {NAMESPACE}"


# ---------------------------------------------------------------------------------------------------- the pods

def test_deployment_shape(objects: Objects, pod: dict, container: dict, dockerfile_stages: Stages) -> None:
    spec = objects["Deployment"]["spec"]
    assert spec["replicas"] == 2
    assert selects(spec["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "command" not in container, "the image's ENTRYPOINT (qasr serve) runs; args only add flags"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    runtime = dockerfile_stages[-1]
    [user] = [args for key, args in runtime if key == "USER"]
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and str(security["runAsUser"]) == user.split(":")[0], "the image's uid"
    hf_home = next(re.search(r"HF_HOME=(\S+)", args).group(1) for key, args in runtime
                   if key == "ENV" and "HF_HOME=" in args)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert hf_home in mounts and mounts[hf_home] in {v["name"] for v in pod["spec"]["volumes"]}, \
        f"no volume for the Hugging Face cache at {hf_home}"


def test_ports_and_probes(pod: dict, container: dict, dockerfile_stages: Stages) -> None:
    [port] = container["ports"]
    exposed = [args for key, args in dockerfile_stages[-1] if key == "EXPOSE"]
    assert [str(port["containerPort"])] == exposed
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == "/health", kind
        assert probe["port"] in (port["containerPort"], port.get("name")), f"{kind} probes another port"

    def patience(kind: str) -> int:
        probe = container[kind]
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    assert patience("livenessProbe") > patience("readinessProbe"), "liveness gives up later than readiness"
    assert patience("startupProbe") >= 600, "the startup probe waits out a model download and load"


def test_grace_period_outlasts_the_drain(pod: dict, container: dict) -> None:
    drain = float(flag_value(container["args"], "--drain-timeout-s"))
    sleep = 0.0
    if command := container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command"):
        sleep = float(re.search(r"sleep\s+(\d+)", " ".join(command)).group(1))
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + sleep


def test_secret_refs(objects: Objects, container: dict) -> None:
    secret = objects["Secret"]
    assert secret["type"] == "Opaque"
    keys = set(secret["stringData"])
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert {e["name"] for e in container["env"]} >= {"QASR_API_KEYS", "QASR_TASK_DB"}
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, ref
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"the Secret's {key} is a placeholder, marked to be replaced"


def test_args_are_qasr_serve_flags(container: dict, serve_flags: set[str]) -> None:
    args = container["args"]
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in serve_flags, f"{arg} is not a flag of qasr serve"
    assert "--task-db" not in args, "the database URL (its password) belongs in QASR_TASK_DB, not in argv"
    read = {field.metadata["env"] for field in dataclasses.fields(ServerOptions) if field.metadata.get("env")}
    assert {e["name"] for e in container["env"]} <= read, "every variable is one qasr serve reads"
    env = {e["name"] for e in container["env"]}
    for reference in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert reference in env, f"$({reference}) names no variable of the container"


def test_command_line_parses(objects: Objects, container: dict, dockerfile_stages: Stages,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's ENTRYPOINT flags plus the container's args, $(VAR) filled from the Secret, through the parser of
    `qasr serve` (with the container's environment) and into its option dataclasses (which check the values)."""
    [entrypoint] = [args for key, args in dockerfile_stages[-1] if key == "ENTRYPOINT"]
    values = {e["name"]: objects["Secret"]["stringData"][e["valueFrom"]["secretKeyRef"]["key"]]
              for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["args"]]
    parser = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    add_arguments(parser)
    parsed = parser.parse_args(json.loads(entrypoint)[2:] + args)
    options, config = ServerOptions.from_cli_args(parsed), EngineConfig.from_cli_args(parsed)
    assert options.host == "0.0.0.0" and options.task_db.startswith("postgresql://") and options.api_keys
    assert options.drain_timeout_s == 30 and config.model == flag_value(args, "--model")


def test_service_and_disruption_budget(objects: Objects, pod: dict, container: dict) -> None:
    labels = pod["metadata"]["labels"]
    service = objects["Service"]["spec"]
    assert selects(service["selector"], labels)
    [port] = service["ports"]
    [container_port] = container["ports"]
    assert port["port"] == 8000 and port["targetPort"] in (container_port["containerPort"], container_port["name"])
    budget = objects["PodDisruptionBudget"]["spec"]
    assert selects(budget["selector"]["matchLabels"], labels) and budget["minAvailable"] == 1
    assert objects["Deployment"]["spec"]["replicas"] > budget["minAvailable"], "the budget must allow an eviction"


# ---------------------------------------------------------------------------------------------------- autoscaling

def test_autoscaler(objects: Objects, exported_series: dict[str, str]) -> None:
    hpa = objects["HorizontalPodAutoscaler"]
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = objects["Deployment"]
    assert spec["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"], "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert spec["minReplicas"] > objects["PodDisruptionBudget"]["spec"]["minAvailable"]
    assert spec["maxReplicas"] >= spec["minReplicas"]
    [metric] = spec["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    assert name == "qasr_num_requests_waiting" and exported_series.get(name) == "gauge"
    assert float(metric["pods"]["target"]["averageValue"]) > 0

    rules = yaml.safe_load(objects["prometheus-adapter-qasr"]["data"]["config.yaml"])["rules"]
    served = []
    for rule in rules:
        series = re.match(r"(\w+)\{(.*)\}$", rule["seriesQuery"])
        naming = rule.get("name", {})
        exposed = re.sub(naming.get("matches", "^(.*)$"), naming.get("as", "${1}").replace("${1}", r"\1"),
                         series.group(1))
        served.append(exposed)
        if exposed == name:
            assert series.group(1) in exported_series
            assert 'namespace!=""' in series.group(2) and 'pod!=""' in series.group(2)
            assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                      "pod": {"resource": "pod"}}
            assert rule["metricsQuery"] == "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"
    assert name in served, f"no adapter rule serves {name}: {served}"


# ---------------------------------------------------------------------------------------------------- scraping

def test_scrape_config(objects: Objects, pod: dict, container: dict) -> None:
    config = prometheus_config(objects)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "qasr"]  # the alerts' up{job="qasr"}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [sd] = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == [NAMESPACE]
    relabels = job["relabel_configs"]
    keeps = {tuple(r["source_labels"]): r["regex"] for r in relabels if r.get("action") == "keep"}
    for label, value in pod["metadata"]["labels"].items():
        if (f"__meta_kubernetes_pod_label_{label}",) in keeps:
            assert re.fullmatch(keeps[(f"__meta_kubernetes_pod_label_{label}",)], value)
    assert keeps[("__meta_kubernetes_pod_label_app",)] == pod["metadata"]["labels"]["app"] == "qasr"
    [port] = container["ports"]
    assert re.fullmatch(keeps[("__meta_kubernetes_pod_container_port_number",)], str(port["containerPort"]))
    targets = {r.get("target_label"): r["source_labels"] for r in relabels if r.get("action", "replace") == "replace"}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"], "the adapter maps the namespace label"
    assert targets["pod"] == ["__meta_kubernetes_pod_name"], "the adapter maps the pod label"
    assert any(Path(f).name == ALERTS.name for f in config["rule_files"]), "the alert rules are loaded"


def test_promtool_checks_the_scrape_config(tool: Tool, objects: Objects, tmp_path: Path) -> None:
    """The ConfigMap's prometheus.yml where Prometheus reads it, with alerts.yml where its rule_files point."""
    promtool = tool("promtool", PROMTOOL_INSTALL)
    text = objects["prometheus-qasr"]["data"]["prometheus.yml"]
    config = yaml.safe_load(text)
    for rule_file in config["rule_files"]:
        assert not Path(rule_file).is_absolute(), "rule files relative to the config, where the rules are mounted"
        (tmp_path / rule_file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALERTS, tmp_path / rule_file)

    def check(config_text: str) -> subprocess.CompletedProcess:
        (tmp_path / "prometheus.yml").write_text(config_text)
        return subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)

    run = check(text)
    if "field kubernetes_sd_configs not found" in run.stdout + run.stderr:
        # Debian builds Prometheus without Kubernetes discovery (test_scrape_config checks that block): promtool
        # checks the rest, the discovery swapped for a static target
        for job in config["scrape_configs"]:
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": ["10.0.0.1:8000"]}]
        run = check(yaml.safe_dump(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"SUCCESS: \d+ rules found", run.stdout), run.stdout
