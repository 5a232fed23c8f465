"""Asset checks: each Spark result must equal DuckDB running the official TPC-H SQL on the same
generated tables."""


import datetime as dt
import decimal
import math
from pathlib import Path

import duckdb
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from assets.tpch.data import TABLES, TpchData
from assets.tpch.queries import tpch_q1, tpch_q3, tpch_q5, tpch_q6

SQL = Path(__file__).parent / "sql"
REL_TOLERANCE = 1e-9  # decimal sums agree exactly; averages differ only in the last digits


def official_result(tpch: TpchData, query: str) -> tuple[list[str], list[tuple]]:
    with duckdb.connect() as db:
        for table in TABLES:
            db.execute(f"create view {table} as select * from read_parquet('{tpch.table(table)}')")
        cursor = db.execute((SQL / f"{query}.sql").read_text())
        return [c[0] for c in cursor.description], cursor.fetchall()


def spark_result(tpch: TpchData, query: str) -> tuple[list[str], list[tuple]]:
    with duckdb.connect() as db:
        cursor = db.execute(f"select * from read_parquet('{tpch.result(query)}/*.parquet')")
        return [c[0] for c in cursor.description], cursor.fetchall()


def _same_value(a, b) -> bool:
    if isinstance(a, (int, float, decimal.Decimal)) and isinstance(b, (int, float, decimal.Decimal)):
        a, b = float(a), float(b)
        return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=1e-9)
    if isinstance(a, dt.datetime):
        a = a.date()
    if isinstance(b, dt.datetime):
        b = b.date()
    return a == b


def compare(expected: tuple[list[str], list[tuple]], actual: tuple[list[str], list[tuple]],
            ordered: bool) -> list[str]:
    """Differences between two results, as readable lines; empty when they agree."""
    (exp_cols, exp_rows), (act_cols, act_rows) = expected, actual
    if exp_cols != act_cols:
        return [f"columns differ: expected {exp_cols}, got {act_cols}"]
    if len(exp_rows) != len(act_rows):
        return [f"row count differs: expected {len(exp_rows)}, got {len(act_rows)}"]
    if not ordered:
        exp_rows, act_rows = sorted(exp_rows, key=repr), sorted(act_rows, key=repr)
    problems = []
    for i, (e, a) in enumerate(zip(exp_rows, act_rows)):
        for col, ev, av in zip(exp_cols, e, a):
            if not _same_value(ev, av):
                problems.append(f"row {i} column {col}: expected {ev!r}, got {av!r}")
    return problems


def _check(tpch: TpchData, query: str, ordered: bool = True) -> AssetCheckResult:
    problems = compare(official_result(tpch, query), spark_result(tpch, query), ordered)
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "differences": MetadataValue.int(len(problems)),
            "first_differences": MetadataValue.md("\n".join(f"- {p}" for p in problems[:10]) or "none"),
        },
    )


@asset_check(asset=tpch_q1, description="Q1 equals DuckDB running the official SQL")
def q1_matches_duckdb(tpch: TpchData) -> AssetCheckResult:
    return _check(tpch, "q1")


@asset_check(asset=tpch_q3, description="Q3 equals DuckDB running the official SQL")
def q3_matches_duckdb(tpch: TpchData) -> AssetCheckResult:
    return _check(tpch, "q3")


@asset_check(asset=tpch_q5, description="Q5 equals DuckDB running the official SQL")
def q5_matches_duckdb(tpch: TpchData) -> AssetCheckResult:
    return _check(tpch, "q5")


@asset_check(asset=tpch_q6, description="Q6 equals DuckDB running the official SQL")
def q6_matches_duckdb(tpch: TpchData) -> AssetCheckResult:
    return _check(tpch, "q6")


QUERY_CHECKS = [q1_matches_duckdb, q3_matches_duckdb, q5_matches_duckdb, q6_matches_duckdb]
