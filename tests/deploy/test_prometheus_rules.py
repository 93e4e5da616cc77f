"""deploy/prometheus/alerts.yml: promtool accepts it, and accepts deploy/prometheus/prometheus.yml loading it; each
alert the brief names is there with a `for`, a severity, a summary and a description; its expressions query only
series the server's /metrics exports, with label values the server uses, counters and histograms only through
rate()/increase()/irate(); and promtool's rule unit tests show each alert firing on series that should fire it and
staying quiet on a replica that should not (the annotations left out there: promtool compares them verbatim)."""

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
PROMTOOL_INSTALL = "run `make setup`, or `apt-get install prometheus` (Debian's package ships promtool)"
ALERT_METRICS = {  # alert -> the series its expression must query
    "QasrReplicaDown": {"up"},
    "QasrEngineDown": {"qasr_engine_up"},
    "QasrHighErrorRatio": {"qasr_requests_total"},
    "QasrQueueGrowing": {"qasr_num_requests_waiting"},
    "QasrHighP99Latency": {"qasr_e2e_request_latency_seconds_bucket"},
    "QasrKVCacheFull": {"qasr_kv_cache_usage_perc"},
    "QasrTasksFailing": {"qasr_async_tasks_finished_total"},
    "QasrTaskLeaseExpiries": {"qasr_async_task_lease_expiries_total"},
    "QasrTaskStoreDown": {"qasr_task_store_up"},
}
Names = Callable[[str], set[str]]
SEVERITIES = {"critical", "warning", "info"}
RANGE_FUNCS = ("rate", "irate", "increase")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(qasr_[A-Za-z0-9_:]*)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


@pytest.fixture(scope="module")
def rules() -> dict[str, dict]:
    config = yaml.safe_load(ALERTS.read_text())
    [group] = config["groups"]
    assert group["name"] == "qasr"
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert len(alerts) == len(group["rules"]), "one rule per alert name, all of them alerts"
    return alerts


@pytest.fixture(scope="module")
def promtool(tool: Callable[[str, str], str]) -> str:
    return tool("promtool", PROMTOOL_INSTALL)


def call_args(expr: str, func: str) -> list[tuple[int, int]]:
    """(start, end) of the argument text of every call to `func` in `expr` (its strings stripped)."""
    spans = []
    for m in re.finditer(rf"(?<![A-Za-z0-9_:]){func}\s*\(", expr):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        spans.append((m.end(), i - 1))
    return spans


# ---------------------------------------------------------------------------------------------------- promtool

def test_promtool_checks_the_rules(promtool: str) -> None:
    run = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(ALERT_METRICS)} rules found" in run.stdout, run.stdout


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-compose.yml"])
def test_promtool_checks_the_configs(promtool: str, name: str) -> None:
    """The host's and the compose file's config, each with its rule_files resolved beside it."""
    run = subprocess.run([promtool, "check", "config", str(PROMETHEUS / name)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 1 rule files found" in run.stdout and "SUCCESS: 9 rules found" in run.stdout, run.stdout


def test_compose_mounts_its_config_with_the_rules_beside_it() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus-compose.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]
    mounts = dict(v.split(":")[:2] for v in yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]["volumes"])
    config_in = Path(mounts["./prometheus/prometheus-compose.yml"])
    assert config_in.name == "prometheus.yml"  # where the image's Prometheus reads its config
    assert Path(mounts[f"./prometheus/{ALERTS.name}"]) == config_in.parent / ALERTS.name
    [qasr] = [c for c in config["scrape_configs"] if c["job_name"] == "qasr"]
    assert qasr["static_configs"][0]["targets"] == ["host.docker.internal:8000"]
    host = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [qasr] = [c for c in host["scrape_configs"] if c["job_name"] == "qasr"]
    assert qasr["static_configs"][0]["targets"][0].startswith("127.0.0.1:")  # a host-run Prometheus, as written


def test_scrape_interval_is_the_data_sources() -> None:
    """Grafana's $__rate_interval is four of the data source's timeInterval: it must be the real scrape interval."""
    provisioning = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    [source] = yaml.safe_load(provisioning.read_text())["datasources"]
    for name in ("prometheus.yml", "prometheus-compose.yml"):
        config = yaml.safe_load((PROMETHEUS / name).read_text())
        assert config["global"]["scrape_interval"] == source["jsonData"]["timeInterval"], name


# ---------------------------------------------------------------------------------------------------- the rules

def test_every_alert_is_complete(rules: dict[str, dict]) -> None:
    assert set(rules) == set(ALERT_METRICS)
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for`"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name


def test_alerts_query_what_they_are_about(rules: dict[str, dict], promql_metric_names: Names) -> None:
    for name, rule in rules.items():
        queried = promql_metric_names(rule["expr"]) | ({"up"} if re.search(r"\bup\s*\{", rule["expr"]) else set())
        assert ALERT_METRICS[name] <= queried, f"{name} queries {queried}"


def test_queried_series_are_exported(rules: dict[str, dict], promql_metric_names: Names,
                                     exported_series: dict[str, str]) -> None:
    for name, rule in rules.items():
        missing = promql_metric_names(rule["expr"]) - set(exported_series)
        assert not missing, f"{name} queries series the server does not export: {missing}"


def test_counters_only_through_range_functions(rules: dict[str, dict], promql_metric_names: Names,
                                               exported_series: dict[str, str]) -> None:
    for name, rule in rules.items():
        bare = STRING.sub('""', rule["expr"])
        ranged = [span for func in RANGE_FUNCS for span in call_args(bare, func)]
        for start, end in ranged:
            assert re.search(r"\[\d+[smh]\]", bare[start:end]), f"{name}: a range function without a range"
            for metric in promql_metric_names(bare[start:end]):
                assert exported_series.get(metric) in ("counter", "histogram"), f"{name}: rate() of the gauge {metric}"
        outside = "".join(" " if any(s <= i < e for s, e in ranged) else ch for i, ch in enumerate(bare))
        for metric in promql_metric_names(outside):
            assert exported_series.get(metric) not in ("counter", "histogram"), f"{name}: raw {metric}, use rate()"
        for start, end in call_args(bare, "histogram_quantile"):
            assert re.search(r"\bby\s*\([^)]*\ble\b", bare[start:end]), f"{name}: aggregate `by (le, ...)`"


def test_label_values_are_the_servers(rules: dict[str, dict], exported_labels: dict[str, dict[str, set[str]]]) -> None:
    for name, rule in rules.items():
        for metric, matchers in SELECTOR.findall(rule["expr"]):
            for label, op, value in MATCHER.findall(matchers):
                have = exported_labels.get(metric, {})
                assert label in have, f"{name}: {metric} has no label {label}"
                values = value.split("|") if op in ("=~", "!~") else [value]
                assert all(v in have[label] for v in values), f"{name}: {metric}{{{label}}} is one of {have[label]}"


def test_up_selects_the_scrape_job(rules: dict[str, dict]) -> None:
    jobs = {c["job_name"] for c in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    k8s = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "40-prometheus.yaml").read_text())
    [scrape] = [doc["data"]["prometheus.yml"] for doc in k8s if doc]
    k8s_jobs = {c["job_name"] for c in yaml.safe_load(scrape)["scrape_configs"]}
    job = re.search(r'up\{job="([^"]+)"\}', rules["QasrReplicaDown"]["expr"]).group(1)
    assert job in jobs and job in k8s_jobs


# ---------------------------------------------------------------------------------------------------- unit tests

def series(name: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"job": "qasr", "instance": instance, **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def test_promtool_rule_unit_tests(promtool: str, rules: dict[str, dict], tmp_path: Path) -> None:
    """Replica a:8000 has every problem and b:8000 none; at 40 minutes each alert fires for a (or for the job) only."""
    stripped = yaml.safe_load(ALERTS.read_text())
    for rule in stripped["groups"][0]["rules"]:
        rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(stripped))
    bad, good = "a:8000", "b:8000"
    bucket = "qasr_e2e_request_latency_seconds_bucket"
    tasks = "qasr_async_tasks_finished_total"
    inputs = [
        series("up", bad, "1 1 0x45"), series("up", good, "1x47"),
        series("qasr_engine_up", bad, "1 0x46"), series("qasr_engine_up", good, "1x47"),
        # 10% server errors on a, 1% on b
        series("qasr_requests_total", bad, "0+90x47", status="success"),
        series("qasr_requests_total", bad, "0+10x47", status="server_error"),
        series("qasr_requests_total", good, "0+99x47", status="success"),
        series("qasr_requests_total", good, "0+1x47", status="server_error"),
        series("qasr_requests_total", good, "0+50x47", status="client_error"),
        # a's queue climbs past 16; b's is as long but steady
        series("qasr_num_requests_waiting", bad, "0+2x47"), series("qasr_num_requests_waiting", good, "40x47"),
        # a's requests all take 30 to 120 s, b's under 30 s
        series(bucket, bad, "0x47", le="30"), series(bucket, bad, "0+10x47", le="120"),
        series(bucket, bad, "0+10x47", le="+Inf"),
        *[series(bucket, good, "0+10x47", le=le) for le in ("30", "120", "+Inf")],
        series("qasr_kv_cache_usage_perc", bad, "0.99x47"), series("qasr_kv_cache_usage_perc", good, "0.5x47"),
        # 30% of the succeeded or failed tasks fail; the many canceled ones do not dilute that
        series(tasks, bad, "0+3x47", status="failed"), series(tasks, bad, "0+7x47", status="succeeded"),
        series(tasks, good, "0+100x47", status="canceled"),
        series("qasr_async_task_lease_expiries_total", bad, "0x30 1x16"),
        series("qasr_async_task_lease_expiries_total", good, "0x47"),
        series("qasr_task_store_up", bad, "1 0x46"), series("qasr_task_store_up", good, "1x47"),
    ]
    per_job = {"QasrTasksFailing", "QasrTaskLeaseExpiries"}
    alert_tests = []
    for name, rule in rules.items():
        labels = {"job": "qasr", "severity": rule["labels"]["severity"]}
        if name not in per_job:
            labels["instance"] = bad
        alert_tests.append({"eval_time": "40m", "alertname": name, "exp_alerts": [{"exp_labels": labels}]})
        alert_tests.append({"eval_time": "1m", "alertname": name, "exp_alerts": []})
    suite = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": alert_tests}]}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr
