"""A real Prometheus scrapes `dpe metrics` through a real cycle (`dpe demo` on the local
environment: daemon, queued run, a Spark worker node up, the run, the node removed, the usage
recorded), and PromQL answers what the pools and the ledger say."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dpe_dagster.daemon import stop_process_group
from tests.paths import PROJECT_ROOT
from tests.support.cli import DPE, dpe, fresh_environment
from tests.support.local import free_port, wait_for
from tests.support.prometheus import prometheus_binary

pytestmark = pytest.mark.slow


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                    timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)


def test_prometheus_sees_the_node_come_and_go_and_the_ledgers_cost(tmp_path):
    binary = prometheus_binary()
    env = fresh_environment(tmp_path)
    exporter_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dpe-metrics", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    processes: list[subprocess.Popen] = []
    try:
        demo = start([DPE, "demo"], env, tmp_path / "demo.log")
        processes.append(demo)
        # The demo writes the instance first; the exporter opens it, as its Deployment opens the chart's.
        wait_for(lambda: (Path(env["DAGSTER_HOME"]) / "dagster.yaml").exists(), 120, "the demo's instance")
        processes.append(start([DPE, "metrics", "--port", str(exporter_port), "--address", "127.0.0.1"], env,
                               tmp_path / "exporter.log"))
        processes.append(start([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}"], env, tmp_path / "prometheus.log"))
        prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")
        wait_for(lambda: _answers(prometheus.targets_up), 60, "Prometheus scraping the exporter")
        assert demo.wait(timeout=900) == 0, (tmp_path / "demo.log").read_text()[-3000:]
        time.sleep(3)  # a few scrapes after the node is gone and the ledger written

        # The node came up for the run and went: the pool's series say so.
        assert prometheus.value('max_over_time(sum(dpe_pool_nodes{pool="spot-etl",state="running"})[15m:1s])') >= 1
        assert prometheus.value('sum(dpe_pool_nodes{pool="spot-etl",state="running"})') == 0
        assert prometheus.value('dpe_pool_target_nodes{pool="spot-etl"}') == 0
        assert prometheus.value('dpe_pool_up{pool="spot-etl"}') == 1
        # The autoscaler ticked while Prometheus watched; the run waited for room once.
        assert prometheus.value('time() - dpe_autoscaler_last_tick_timestamp_seconds{pool="spot-etl"}') < 120
        assert prometheus.value('dpe_run_wait_seconds_count{pool="spot-etl"}') == 1
        assert prometheus.value('dpe_pool_waiting_runs{pool="spot-etl"}') == 0

        # Cost as `dpe usage` says it, to the cent (and closer: the same records, summed).
        runs = json.loads(dpe("usage", "--json", env=env).stdout)
        pools = {row["pool"]: row for row in json.loads(dpe("usage", "--by", "pool", "--json", env=env).stdout)}
        charged = sum(r["cost_usd"] for r in runs)
        assert charged > 0
        assert prometheus.value("sum(dpe_cost_usd_total)") == pytest.approx(charged, abs=1e-9)
        assert round(prometheus.value("sum(dpe_cost_usd_total)"), 2) == round(charged, 2)
        assert prometheus.value('dpe_paid_usd_total{pool="spot-etl"}') == pytest.approx(pools["spot-etl"]["paid_usd"],
                                                                                      abs=1e-9)
        assert prometheus.value('sum(dpe_node_seconds_total{pool="spot-etl"})') == pytest.approx(
            sum(r["node_seconds"] for r in runs), abs=1e-6)
    finally:
        for process in reversed(processes):
            stop_process_group(process)


def _answers(check) -> bool:
    try:
        return check()
    except OSError:
        return False
