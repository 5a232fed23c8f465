"""A real dagster-daemon on aws-sim with AWS faults injected at the HTTP level: every run completes, nothing leaks, nothing is recorded
twice or lost, and no scale action reaches AWS twice for one decision."""

from __future__ import annotations

import pytest
from dagster import DagsterRunStatus

from tests.fakes.aws_faults import FaultRates

pytestmark = pytest.mark.slow
RUNS = 4


def test_autoscaler_converges_under_20_percent_aws_faults(deploy):
    rates = FaultRates.failing(0.20, latency=0.10, latency_s=0.3)  # 5% each of 500, 503, throttle, drop
    d = deploy(rates, runs=RUNS, run_s=4)
    d.start_daemon()
    d.settle(RUNS)
    assert {r.tags["dpe/node_pool"] for r in d.runs(DagsterRunStatus.SUCCESS)} <= {"spot-etl", "ondemand-etl"}
    for kind in ("500", "503", "throttle", "dropped", "latency"):
        assert d.injector.injected[kind] > 0, d.injector.injected
