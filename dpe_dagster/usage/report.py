"""Turning the ledger into something a person reads: a table, or JSON for programs."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any, Callable

from rich.table import Table

from dpe_dagster.usage.records import NodeLifetime, UsageRecord, iso


def runs_table(records: list[UsageRecord]) -> Table:
    table = Table(title="dpe usage by run (from Dagster's event log)")
    for column in ("run", "job", "pool", "status", "lifecycle", "started", "ended", "node-s", "$/node-h", "cost $"):
        table.add_column(column, justify="right" if column in ("node-s", "$/node-h", "cost $") else "left")
    for r in records:
        table.add_row(r.run_id[:8], r.job_name, r.pool, r.status, r.lifecycle, iso(r.started_at), iso(r.ended_at),
                      f"{r.node_seconds:.1f}", f"{r.price_per_node_hour:.4f}", f"{r.cost_usd:.6f}")
    if records:
        table.add_row("total", "", "", "", "", "", "", f"{sum(r.node_seconds for r in records):.1f}", "",
                      f"{sum(r.cost_usd for r in records):.6f}", style="bold")
    return table


def nodes_table(lifetimes: list[NodeLifetime]) -> Table:
    """One row per node, and a total. The `unknown s` and `interrupted` columns appear only when a
    node has them, so the usual table stays readable in a narrow terminal."""
    columns: dict[str, Callable[[NodeLifetime], str]] = {
        "node": lambda n: n.node_id, "pool": lambda n: n.pool, "type": lambda n: n.instance_type,
        "lifecycle": lambda n: n.lifecycle, "launched": lambda n: iso(n.launched_at),
        "removed": lambda n: iso(n.removed_at), "removed because": lambda n: n.removed_because,
        "busy s": lambda n: f"{n.busy_seconds:.1f}", "idle s": lambda n: f"{n.idle_seconds:.1f}",
        "unknown s": lambda n: f"{n.unknown_seconds:.1f}", "paid $": lambda n: f"{n.cost_usd:.6f}",
        "interrupted": _interruption,
    }
    if not any(n.unknown_seconds for n in lifetimes):
        del columns["unknown s"]
    if not any(n.interrupted for n in lifetimes):
        del columns["interrupted"]
    totals = {"node": "total", "busy s": f"{sum(n.busy_seconds for n in lifetimes):.1f}",
              "idle s": f"{sum(n.idle_seconds for n in lifetimes):.1f}",
              "unknown s": f"{sum(n.unknown_seconds for n in lifetimes):.1f}",
              "paid $": f"{sum(n.cost_usd for n in lifetimes):.6f}"}
    table = Table(title="node lifetimes (paid = busy + idle)")
    for column in columns:
        # A node's id is what a user looks up elsewhere: never cut, however narrow the terminal.
        whole = max((len(n.node_id) for n in lifetimes), default=0) if column == "node" else None
        table.add_column(column, justify="right" if column.endswith((" s", "$")) else "left", min_width=whole)
    for n in lifetimes:
        table.add_row(*(cell(n) for cell in columns.values()))
    if lifetimes:
        table.add_row(*(totals.get(column, "") for column in columns), style="bold")
    return table


def _interruption(n: NodeLifetime) -> str:
    return f"{n.interrupted} {iso(n.interrupted_at)}".strip() if n.interrupted else ""


def node_rows(lifetimes: list[NodeLifetime]) -> list[dict[str, Any]]:
    """Node lifetimes for programs (`dpe usage --nodes --json` / `--format csv`): every stored
    field, times in ISO 8601, and what the node was paid (paid = busy + idle)."""
    rows = []
    for n in lifetimes:
        row = dataclasses.asdict(n)
        row.update(launched_at=iso(n.launched_at), removed_at=iso(n.removed_at),
                   lifetime_seconds=n.lifetime_seconds, idle_seconds=n.idle_seconds, paid_usd=n.cost_usd,
                   interrupted_at=iso(n.interrupted_at) or None)
        rows.append(row)
    return rows


def rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column, justify="right" if isinstance(rows[0][column], (int, float)) else "left")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value) if len(json.dumps(value)) < 60 else f"({len(value)})"
    return "" if value is None else str(value)


def rows_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return out.getvalue()
