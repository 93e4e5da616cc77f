"""deploy/grafana/qasr-dashboard.json: valid Grafana structure, sane PromQL, and every qasr_* series it queries is one
the server's /metrics exports (serve.metrics.Metrics over a fake engine and an empty in-memory task store)."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "qasr-dashboard.json"
DS_UID = "${DS_PROMETHEUS}"
ROWS = ["Overview", "Latency", "Throughput", "Engine", "Async tasks", "Operations"]
# what the dashboard must chart (the exact series names Prometheus stores)
REQUIRED = {
    "qasr_requests_total", "qasr_e2e_request_latency_seconds_bucket", "qasr_time_to_first_token_seconds_bucket",
    "qasr_request_queue_time_seconds_bucket", "qasr_request_real_time_factor_bucket",
    "qasr_request_audio_duration_seconds_bucket", "qasr_audio_input_seconds_total", "qasr_prompt_tokens_total",
    "qasr_generation_tokens_total", "qasr_num_preemptions_total", "qasr_num_requests_running",
    "qasr_num_requests_waiting", "qasr_num_sequences_running", "qasr_num_sequences_waiting",
    "qasr_kv_cache_usage_perc", "qasr_async_tasks", "qasr_async_tasks_finished_total",
    "qasr_async_task_latency_seconds_bucket", "qasr_engine_up", "qasr_draining", "qasr_task_store_up",
    "qasr_auth_failures_total", "qasr_audio_seconds_in_flight", "qasr_async_task_lease_expiries_total",
    "qasr_aligned_audio_seconds_total", "qasr_alignment_latency_seconds_bucket",
}
# labels Prometheus attaches at scrape time, on top of those the server exports
TARGET_LABELS = {"job", "instance"}
RANGE_FUNCS = ("rate", "irate", "increase")
NAME = re.compile(r"(?<![A-Za-z0-9_:])qasr_[A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
MATCHER = r'[A-Za-z_]\w*\s*(?:=~|!~|!=|=)\s*""'  # label op "value", the value stripped


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels plus those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
            for p in all_panels(dashboard) for t in p.get("targets", [])]


def variable_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


# ---------------------------------------------------------------------------------------------------- PromQL helpers

def kind(name: str, exported_series: dict[str, str]) -> str:
    """The exported series' type; for one not exported (test_every_queried_metric_is_exported reports those), what its
    suffix says."""
    if name in exported_series:
        return exported_series[name]
    return "counter" if name.endswith("_total") else "histogram" if name.endswith(("_bucket", "_sum", "_count")) \
        else "gauge"


def strip_strings(expr: str) -> str:
    return STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    return set(NAME.findall(strip_strings(expr)))


def call_args(expr: str, func: str) -> list[tuple[int, int]]:
    """(start, end) of the argument text of every call to `func` (expr has its strings stripped)."""
    spans = []
    for m in re.finditer(rf"(?<![A-Za-z0-9_:]){func}\s*\(", expr):
        depth, start = 1, m.end()
        i = start
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        spans.append((start, i - 1))
    return spans


def balanced(expr: str) -> bool:
    """Brackets pair up, and nothing opens inside a label selector's braces."""
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in strip_strings(expr):
        if ch in "([{":
            if stack and stack[-1] == "{":
                return False
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def grouping_labels(expr: str) -> list[set[str]]:
    """The label lists of every by/without/on/ignoring clause."""
    return [{x.strip() for x in m.group(1).split(",") if x.strip()}
            for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", strip_strings(expr))]


def selectors(expr: str) -> list[tuple[str, str | None]]:
    """(metric name, matcher text inside braces or None) for every qasr_* selector."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"(?<![A-Za-z0-9_:])(qasr_[A-Za-z0-9_:]*)\s*(?:\{([^}]*)\})?",
                                                          expr)]


# ---------------------------------------------------------------------------------------------------- structure

def test_dashboard_top_level(dashboard: dict) -> None:
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard.get("id") is None, "an importable dashboard carries no database id"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]
    assert dashboard["time"]["from"] and dashboard["time"]["to"]


def test_template_variables(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == {"type": "prometheus", "uid": DS_UID}
        # "All" is the variable's own values, the targets exporting qasr metrics: an allValue of ".*" would take in
        # every target Prometheus scrapes (itself too), and `up` would count them as replicas
        assert var["includeAll"] and var["multi"] and not var.get("allValue")
    # the metrics carry no per-model label, so there is no model variable to template on
    used = set()
    for _, expr in panel_exprs(dashboard) + variable_exprs(dashboard):
        used |= set(re.findall(r"\$(?:\{)?([A-Za-z_][A-Za-z0-9_]*)", expr))
    builtins = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
    assert used - builtins <= set(variables), f"undefined variables: {used - builtins - set(variables)}"


def test_panels_ids_and_grid(dashboard: dict) -> None:
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), "panel ids must be unique ints"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert g["h"] > 0 and g["w"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_rows_and_panel_targets(dashboard: dict) -> None:
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ROWS
    top = dashboard["panels"]
    assert top[0]["type"] == "row", "every panel sits in a row"
    # each row's panels follow it in the list and lie between it and the next row on the grid
    starts = [top.index(r) for r in rows] + [len(top)]
    for row, begin, end in zip(rows, starts, starts[1:]):
        below = top[begin + 1:end]
        assert below, f"row {row['title']!r} is empty"
        limit = top[end]["gridPos"]["y"] if end < len(top) else float("inf")
        for p in below:
            assert row["gridPos"]["y"] < p["gridPos"]["y"] and p["gridPos"]["y"] + p["gridPos"]["h"] <= limit, \
                f"panel {p['title']!r} is not under row {row['title']!r}"
    assert all(p["type"] == "stat" for p in top[starts[0] + 1:starts[1]]), "the Overview row holds stat panels"
    for p in all_panels(dashboard):
        if p["type"] == "row":
            assert "targets" not in p
            continue
        assert p["title"] and p["type"] in {"stat", "timeseries", "heatmap", "gauge", "bargauge", "table"}
        assert p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
            assert isinstance(t["expr"], str) and t["expr"].strip(), p["title"]


# ---------------------------------------------------------------------------------------------------- PromQL

def test_promql_shape(dashboard: dict, exported_series: dict[str, str]) -> None:
    for where, query in variable_exprs(dashboard):  # Grafana's label_values(), not PromQL
        assert balanced(query) and re.fullmatch(r"label_values\(qasr_\w+(\{[^}]*\})?, *\w+\)", query), where
    for where, expr in panel_exprs(dashboard):
        assert balanced(expr), f"{where}: unbalanced brackets in {expr}"
        bare = strip_strings(expr)
        for start, end in call_args(bare, "histogram_quantile"):
            arg = bare[start:end]
            phi = re.match(r"\s*([0-9.]+)\s*,", arg)
            assert phi and 0 <= float(phi.group(1)) <= 1, f"{where}: histogram_quantile needs a quantile first"
            names = metric_names(arg)
            assert names and all(n.endswith("_bucket") for n in names), f"{where}: quantile over non-bucket {names}"
            assert any("le" in labels for labels in grouping_labels(arg)), f"{where}: aggregate `by (le, ...)`"
            assert call_args(arg, "rate") or call_args(arg, "increase"), f"{where}: quantile of raw buckets"
        # counters and histogram series only under rate()/increase(), with a range; gauges never there
        ranged = [(s, e) for f in RANGE_FUNCS for s, e in call_args(bare, f)]
        for s, e in ranged:
            assert re.search(r"\[[^\]]+\]", bare[s:e]), f"{where}: range function without a range"
            for name in metric_names(bare[s:e]):
                assert kind(name, exported_series) in {"counter", "histogram"}, f"{where}: rate() over gauge {name}"
        outside = "".join(ch if not any(s <= i < e for s, e in ranged) else " " for i, ch in enumerate(bare))
        for name in metric_names(outside):
            assert kind(name, exported_series) not in {"counter", "histogram"}, f"{where}: raw {name}, use rate()"


def test_panel_queries_follow_job_and_instance(dashboard: dict) -> None:
    for where, expr in panel_exprs(dashboard):
        for name, matchers in selectors(expr):
            assert matchers and 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, \
                f"{where}: {name} ignores the job/instance selection"
            assert re.fullmatch(rf"\s*{MATCHER}(\s*,\s*{MATCHER})*\s*,?\s*", STRING.sub('""', matchers)), \
                f"{where}: malformed selector {name}{{{matchers}}}"


def test_labels_exist(dashboard: dict, exported_labels: dict[str, dict[str, set[str]]]) -> None:
    """Grouping and matcher labels exist on the series queried, and `label="value"` matchers name a value the server
    exports (where the series has samples to tell)."""
    for where, expr in panel_exprs(dashboard):
        names = metric_names(expr)
        known = TARGET_LABELS | {"le"}
        for name in names:
            known |= set(exported_labels.get(name, {}))
        if any(name not in exported_labels for name in names):
            known.add("status")  # a labelled series with nothing observed yet shows no labels: trust `status` there
        for labels in grouping_labels(expr):
            assert labels <= known, f"{where}: grouping by unknown labels {labels - known}"
        for name, matchers in selectors(expr):
            if name not in exported_labels:
                continue
            have = exported_labels[name]
            for label, op, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers or ""):
                if label in TARGET_LABELS:
                    continue
                assert label in have, f"{where}: {name} has no label {label}"
                if op in ("=", "!="):
                    assert value in have[label], f"{where}: {name}{{{label}}} is never {value!r}: {have[label]}"


# ---------------------------------------------------------------------------------------------------- vs the server

def test_fake_engine_feeds_the_gauges(exposition: str) -> None:
    assert "qasr_num_requests_running 2.0" in exposition
    assert "qasr_num_requests_waiting 1.0" in exposition
    assert "qasr_num_sequences_running 3.0" in exposition
    assert "qasr_num_sequences_waiting 5.0" in exposition
    assert "qasr_kv_cache_usage_perc 0.25" in exposition


def test_every_queried_metric_is_exported(dashboard: dict, exported_series: dict[str, str]) -> None:
    queried: dict[str, str] = {}
    for where, expr in panel_exprs(dashboard) + variable_exprs(dashboard):
        for name in metric_names(expr):
            queried.setdefault(name, where)
    missing = {name: where for name, where in queried.items() if name not in exported_series}
    assert not missing, f"the dashboard queries series the server does not export: {missing}"


def test_dashboard_covers_the_metrics(dashboard: dict) -> None:
    queried = set()
    for _, expr in panel_exprs(dashboard):
        queried |= metric_names(expr)
    assert REQUIRED <= queried, f"not charted: {sorted(REQUIRED - queried)}"


# ---------------------------------------------------------------------------------------------------- deploy files

def test_prometheus_and_provisioning_files() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in prom["scrape_configs"]}
    assert jobs["qasr"].get("metrics_path", "/metrics") == "/metrics"
    assert jobs["qasr"]["static_configs"][0]["targets"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    providers = yaml.safe_load((provisioning / "dashboards" / "qasr.yml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = [v.split(":")[:2] for s in compose["services"].values() for v in s.get("volumes", [])]
    for source, _ in mounts:
        assert (DEPLOY / source).exists(), f"docker-compose mounts a missing {source}"
    assert any(dest.startswith(dashboards_dir) and (DEPLOY / src).resolve() == DASHBOARD for src, dest in mounts)
