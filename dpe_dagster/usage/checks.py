"""The daily report's own check: every pool, every day, paid = attributed + idle to the cent."""

from __future__ import annotations

from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue

from dpe_dagster.usage.records import shown

PAID_CHECK = "paid_is_attributed_plus_idle"
CENT = 0.005  # half a cent: a gap that rounds to no cent at all


def paid_spec(asset: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(PAID_CHECK, asset=asset,
                          description="Per pool and day: what the nodes cost (their lifetimes at their prices) "
                                      "equals what runs were charged plus what stood idle, to the cent.")


def paid_gaps(pool_days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pool-days whose paid differs from attributed + idle by half a cent or more."""
    out = []
    for row in pool_days:
        gap = row["paid_usd"] - (row["attributed_usd"] + row["idle_usd"])
        if abs(gap) >= CENT:
            out.append({**row, "gap_usd": gap})
    return out


def paid_check(pool_days: list[dict[str, Any]]) -> AssetCheckResult:
    gaps = paid_gaps(pool_days)
    worst = max((abs(g["gap_usd"]) for g in gaps), default=0.0)
    if gaps:
        description = "; ".join(
            f"pool {g['pool']} on {g['day']}: paid ${g['paid_usd']:.4f} but attributed ${g['attributed_usd']:.4f} "
            f"+ idle ${g['idle_usd']:.4f} (gap ${g['gap_usd']:+.4f})" for g in gaps)
    else:
        description = f"paid = attributed + idle to the cent on all {len(pool_days)} pool-days"
    return AssetCheckResult(
        check_name=PAID_CHECK, passed=not gaps, severity=AssetCheckSeverity.ERROR, description=description,
        metadata={"pool_days": MetadataValue.int(len(pool_days)), "failing": MetadataValue.json(gaps),
                  "largest_gap_usd": shown("largest_gap_usd", worst)},
    )
