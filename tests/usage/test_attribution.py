"""Attribution invariants: paid = attributed + idle, no run charged for a node that did not exist."""

from __future__ import annotations

import pytest
from dagster import AssetKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dpe_dagster.usage.attribution import NodeSpan, RunSpan, attribute
from dpe_dagster.usage.charges import split_by_step_time


@st.composite
def spans(draw):
    runs = []
    for i in range(draw(st.integers(0, 8))):
        start = draw(st.integers(0, 1000))
        runs.append(RunSpan(f"r{i}", draw(st.sampled_from(["a", "b"])), draw(st.sampled_from([0.25, 0.5, 1.0, 2.0])),
                            start, start + draw(st.integers(1, 500))))
    nodes = []
    for i in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, 1000))
        nodes.append(NodeSpan(f"n{i}", draw(st.sampled_from(["a", "b"])), draw(st.sampled_from([0.035, 0.096, 1.0])),
                              start, start + draw(st.integers(1, 800))))
    return runs, nodes


@settings(max_examples=300, deadline=None)
@given(spans(), st.integers(-100, 600), st.integers(0, 900))
def test_paid_equals_attributed_plus_idle_to_the_cent(data, since, length):
    runs, nodes = data
    charges, pools = attribute(runs, nodes, since=since, until=since + length)
    paid_by_nodes = sum(n.price_per_hour * max(0, min(n.end, since + length) - max(n.start, since)) / 3600
                        for n in nodes)
    assert sum(p.paid for p in pools.values()) == pytest.approx(paid_by_nodes, abs=0.005)
    for pool in pools.values():
        # Exact up to float noise, so any rounding of the three for display agrees within a cent.
        assert pool.paid == pytest.approx(pool.attributed + pool.idle, abs=1e-9)
        assert pool.idle >= -1e-9 and pool.attributed >= -1e-9
    assert sum(c.cost for c in charges.values()) == pytest.approx(sum(p.attributed for p in pools.values()), abs=1e-9)
    for run in runs:
        charge = charges.get(run.run_id)
        if charge:
            overlap = max(0, min(run.end, since + length) - max(run.start, since))
            assert charge.node_seconds <= run.share * overlap + 1e-6


def test_runs_split_the_nodes_alive_while_more_are_booting():
    runs = [RunSpan("a", "p", 2, 10, 60), RunSpan("b", "p", 0.5, 30, 100)]
    nodes = [NodeSpan("n1", "p", 3.6, 15, 130), NodeSpan("n2", "p", 3.6, 20, 130)]
    charges, pools = attribute(runs, nodes)
    # a: nothing before a node exists, half of n1 while it is alone, both nodes, then 80% once b shares.
    assert charges["a"].node_seconds == pytest.approx(0 + 2 * 0.5 * 5 + 2 * 10 + 2 * 0.8 * 30)
    assert charges["b"].node_seconds == pytest.approx(0.5 * 0.8 * 30 + 0.5 * 40)
    assert pools["p"].paid == pytest.approx((115 + 110) * 3.6 / 3600)
    assert pools["p"].idle == pytest.approx(pools["p"].paid - charges["a"].cost - charges["b"].cost)


def test_run_cost_is_split_across_assets_by_step_time():
    a, b, c = AssetKey("a"), AssetKey("b"), AssetKey("c")
    parts = split_by_step_time(1.0, 100.0, {"s1": 30.0, "s2": 10.0}, {a: "s1", b: "s2", c: "s2"})
    assert parts[a] == pytest.approx((0.75, 75.0))
    assert parts[b] == parts[c] == pytest.approx((0.125, 12.5))
    assert sum(p[0] for p in parts.values()) == pytest.approx(1.0)
