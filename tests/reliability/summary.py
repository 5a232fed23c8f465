"""What the reliability suite measured, summed over its tests, for the summary line.

Counts are measured by the tests (runs seen to end SUCCESS, instances still alive at the end,
ledger records missing or repeated), never constants; fault counts come from the injectors."""

from __future__ import annotations

from collections import Counter

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from dpe_dagster.usage.eventlog import read_node_lifetimes, read_run_usage
from tests.fakes import aws_faults as faults

MEASURED: Counter = Counter()
# Every key is printed, also at 0 (a missing key would read as "not measured").
KEYS = ("runs completed", "nodes leaked", "records lost", "records duplicated", "interruption warnings handled",
        "pools failed while others sized")


def add(**counts: int) -> None:
    named = {key.replace("_", " "): value for key, value in counts.items()}
    unknown = sorted(set(named) - set(KEYS))
    if unknown:
        raise ValueError(f"summary.add: unknown key(s) {unknown}; allowed: {list(KEYS)} (underscores for spaces)")
    MEASURED.update(named)


def line() -> str:
    injected = " ".join(f"{kind}={faults.TOTALS[kind]}" for kind in faults.KINDS)
    rest = "; ".join(f"{key} {MEASURED[key]}" for key in KEYS)
    return f"reliability: faults injected {injected}; {rest}"


def audit_ledger(instance: DagsterInstance, removed_node_ids: set[str]) -> dict[str, object]:
    """Ended runs against run-usage records, removed nodes against node-lifetime records:
    lost = ended (or removed) with no record, duplicated = records beyond the first."""
    ended = [r.dagster_run.run_id for r in instance.get_run_records(RunsFilter(
        statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]))]
    usage = Counter(u.run_id for u in read_run_usage(instance))
    lifetimes = Counter(n.node_id for n in read_node_lifetimes(instance))
    lost = [r for r in ended if usage[r] == 0] + [n for n in removed_node_ids if lifetimes[n] == 0]
    duplicated = [k for k, c in usage.items() if c > 1] + [k for k, c in lifetimes.items() if c > 1]
    extra = sum(c - 1 for c in usage.values() if c > 1) + sum(c - 1 for c in lifetimes.values() if c > 1)
    return {"ended": ended, "lost": lost, "duplicated": duplicated, "extra": extra,
            "usage": usage, "lifetimes": lifetimes}
