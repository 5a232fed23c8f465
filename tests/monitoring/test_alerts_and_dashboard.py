"""deploy/monitoring/: the alert rules pass promtool's check and their unit tests, which show every
alert firing and staying quiet; the dashboard and the rules query only series `dpe metrics` serves;
the ServiceMonitor finds the exporter's Service and port (deploy/k8s/metrics.yaml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from dpe_dagster.metrics import HISTOGRAM, METRICS
from tests.support.deploy import DEPLOY
from tests.support.prometheus import promtool

MONITORING = DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
SERVICE_MONITOR = MONITORING / "servicemonitor.yaml"
EXPORTER = DEPLOY / "k8s" / "metrics.yaml"
# The rules file alerts.test.yaml names: the PrometheusRule's spec, as a plain rules file.
RULES_FILE = "dpe.rules.yaml"
DATASOURCE = "${datasource}"
SERIES = re.compile(r"\bdpe_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def rule_object() -> dict:
    return yaml.safe_load(ALERTS.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in rule_object()["spec"]["groups"] for rule in group["rules"] if "alert" in rule]


def write_rules(folder) -> None:
    (folder / RULES_FILE).write_text(yaml.safe_dump(rule_object()["spec"], sort_keys=False))


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def unknown_series(expr: str) -> set[str]:
    """The dpe_ series `expr` names that the exporter does not serve (a histogram's series by their
    _bucket, _sum and _count)."""
    unknown = set()
    for name in SERIES.findall(expr):
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if name in METRICS or (base in METRICS and METRICS[base].kind == HISTOGRAM):
            continue
        unknown.add(name)
    return unknown


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    """Panels, those inside collapsed rows included."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every query the dashboard makes: panels' targets and the query variables."""
    queries = [(f"panel {panel['title']!r} {target.get('refId')}", target["expr"])
               for panel in all_panels(dashboard()["panels"]) for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return queries


# -- the alert rules -------------------------------------------------------------------------------

def test_the_alert_rules_pass_promtool_check(tmp_path):
    binary = promtool()
    write_rules(tmp_path)
    result = run([binary, "check", "rules", RULES_FILE], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_the_alert_rules_pass_their_promtool_unit_tests(tmp_path):
    """promtool resolves rule_files against the test file: both go into one folder."""
    binary = promtool()
    assert yaml.safe_load(ALERT_TESTS.read_text())["rule_files"] == [RULES_FILE]
    write_rules(tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = run([binary, "test", "rules", ALERT_TESTS.name], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_that_fires_it_and_one_where_it_is_quiet():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "two alerts of one name"
    fired: dict[str, int] = {name: 0 for name in names}
    quiet: dict[str, int] = {name: 0 for name in names}
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            # promtool expects nothing of an alert no rule defines, and passes: a misspelt name would test nothing.
            assert name in fired, f"alerts.test.yaml tests {name!r}, which alerts.yaml does not define"
            expected = check.get("exp_alerts") or []
            if expected:
                fired[name] += 1
                for alert in expected:
                    assert "severity" in alert.get("exp_labels", {}), f"{name}: a firing case without its labels"
                    assert alert.get("exp_annotations"), f"{name}: a firing case without its annotations"
            else:
                quiet[name] += 1
    assert [name for name, count in fired.items() if not count] == [], "alerts no test case fires"
    assert [name for name, count in quiet.items() if not count] == [], "alerts no test case shows quiet"


def test_every_alert_waits_says_how_bad_and_what_it_means():
    obj = rule_object()
    assert (obj["apiVersion"], obj["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert (obj["metadata"]["name"], obj["metadata"]["namespace"]) == ("dpe", "dagster")
    assert [group["name"] for group in obj["spec"]["groups"]] == ["dpe"]
    for rule in alert_rules():
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{rule['alert']}: no `for:`"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), rule["alert"]
        assert rule.get("annotations", {}).get("summary") and rule["annotations"].get("description"), rule["alert"]


def test_the_alert_rules_query_only_series_the_exporter_serves():
    for rule in alert_rules():
        assert unknown_series(rule["expr"]) == set(), rule["alert"]


# -- the dashboard ---------------------------------------------------------------------------------

def test_the_dashboard_queries_only_series_the_exporter_serves():
    queries = dashboard_queries()
    assert queries
    for where, expr in queries:
        assert SERIES.search(expr), f"{where} queries no dpe series: {expr}"
        assert unknown_series(expr) == set(), f"{where}: {expr}"


def test_every_dashboard_panel_reads_the_chosen_prometheus():
    board = dashboard()
    assert board["schemaVersion"] == 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    pool = variables["pool"]
    assert pool["datasource"]["uid"] == DATASOURCE
    assert pool["definition"] == pool["query"]["query"] == "label_values(dpe_pool_max_nodes, pool)"
    panels = all_panels(board["panels"])
    assert len({panel["id"] for panel in panels}) == len(panels), "two panels of one id"
    for panel in panels:
        assert panel.get("datasource", {}).get("uid") == DATASOURCE, panel["title"]
        assert panel.get("targets") or panel["type"] == "row", f"{panel['title']}: no query"
        for target in panel.get("targets", []):
            assert target.get("datasource", {}).get("uid", DATASOURCE) == DATASOURCE, panel["title"]


def test_the_dashboards_queries_are_promql(tmp_path):
    """Each query, with Grafana's variables filled in, as a recording rule promtool parses (a
    variable's `label_values(selector, label)`, Grafana's own, by its selector)."""
    binary = promtool()
    fill = {"$pool": ".*", "$__interval": "1h", "$__rate_interval": "1m", "$__range": "7d"}
    rules = []
    for number, (where, expr) in enumerate(dashboard_queries()):
        expr = re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", expr.strip())
        for variable, value in sorted(fill.items(), key=lambda item: -len(item[0])):
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: a variable this test does not fill in: {expr}"
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    (tmp_path / "dashboard.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([binary, "check", "rules", "dashboard.rules.yaml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Prometheus finds the exporter -----------------------------------------------------------------

def test_the_service_monitor_scrapes_the_exporters_port():
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(EXPORTER.read_text()) if doc}
    deployment, service = documents["Deployment"], documents["Service"]
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")

    # The ServiceMonitor selects the Service, in its namespace.
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted and wanted.items() <= service["metadata"]["labels"].items()
    namespaces = monitor["spec"].get("namespaceSelector", {}).get("matchNames", [monitor["metadata"]["namespace"]])
    assert service["metadata"]["namespace"] in namespaces
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["interval"] == "15s" and endpoint.get("path", "/metrics") == "/metrics"
    [service_port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]

    # The Service sends it to the exporter's pods, on the port `dpe metrics --port` listens on.
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["dpe", "metrics"]
    listens = int(args[args.index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = service_port["targetPort"]
    assert listens == 9108 == (ports[target] if isinstance(target, str) else target) == ports[endpoint["port"]]
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/metrics" and check["port"] in (listens, endpoint["port"]), probe
    assert deployment["spec"]["replicas"] == 1
    assert pod["spec"]["serviceAccountName"] == "dagster"
    assert pod["spec"]["nodeSelector"] == {"dpe.io/role": "system"}


@pytest.mark.parametrize("path", [SERVICE_MONITOR, ALERTS], ids=lambda p: p.name)
def test_the_monitoring_objects_live_with_dpe(path):
    obj = yaml.safe_load(path.read_text())
    assert obj["metadata"]["namespace"] == "dagster"
