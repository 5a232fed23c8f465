"""The `dpe/platform_usage` asset: a daily report of what the platform paid, what runs were
charged, what stood idle, what an always-on cluster sized for the same peak would have cost, and
how long runs waited for room per pool and day against the pool's wait target."""


import json
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext, AssetKey, AssetSelection, Config, DefaultScheduleStatus, MaterializeResult, MetadataValue,
    ScheduleDefinition, asset, define_asset_job,
)

from dpe_dagster.config import Environment
from dpe_dagster.paths import dpe_home
from dpe_dagster.usage.waits import DayWaits, read_waits_since, wait_targets, waits_by_pool_day
from dpe_dagster.usage.checks import paid_check, paid_spec
from dpe_dagster.usage.eventlog import read_usage
from dpe_dagster.usage.live import BusySoFar, report_nodes
from dpe_dagster.usage.records import shown
from dpe_dagster.usage.summary import DAY, Window, always_on_cost, by_asset, by_day, by_pool, by_pool_day, day_start

PLATFORM_USAGE_KEY = AssetKey(["dpe", "platform_usage"])


class PlatformUsageConfig(Config):
    days: int = 7


def _markdown(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(nothing recorded)"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.6f}" if isinstance(row[c], float) else str(row[c])
                                        for c in columns) + " |")
    return "\n".join(lines)


def plot_days(days: list[dict], always_on_daily: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [d["day"] for d in days]
    attributed = [d["attributed_usd"] for d in days]
    idle = [d["idle_usd"] for d in days]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    ax.bar(labels, attributed, label="attributed to runs", color="#4c72b0")
    ax.bar(labels, idle, bottom=attributed, label="idle (paid, unused)", color="#dd8452")
    ax.plot(labels, [d["paid_usd"] for d in days], "k.", label="paid")
    if always_on_daily > 0:
        ax.axhline(always_on_daily, color="#c44e52", linestyle="--", label="24x7 cluster for the same peak")
    ax.set_ylabel("USD per day")
    ax.set_title("dpe: paid vs attributed vs idle")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def waits_table(waits: list[DayWaits]) -> str:
    """The waits per pool and day as the asset page shows them (seconds to a tenth)."""
    return _markdown([{"day": w.day, "pool": w.pool, "runs": w.runs, "p95 wait": f"{w.p95_s:.1f}s",
                       "wait target": "-" if w.target_s is None else f"{w.target_s:g}s",
                       "past target": "-" if w.past_target is None else w.past_target,
                       "held": {True: "yes", False: "no", None: "-"}[w.held]} for w in waits],
                     ["day", "pool", "runs", "p95 wait", "wait target", "past target", "held"])


def build_report(records, nodes, window: Window, waits: list[DayWaits] = ()) -> dict:
    days = by_day(records, nodes, window)
    always_on = always_on_cost(nodes, window, records)
    return {
        "window": {"since": window.since, "until": window.until},
        "days": days,
        "assets": by_asset(records, window),
        "pools": by_pool(records, nodes, window),
        "pool_days": by_pool_day(records, nodes, window),
        "waits": [w.as_json() for w in waits],
        "always_on": always_on,
        "paid_usd": sum(d["paid_usd"] for d in days),
        "attributed_usd": sum(d["attributed_usd"] for d in days),
        "idle_usd": sum(d["idle_usd"] for d in days),
    }


def build_platform_usage(env: Environment, busy_so_far: BusySoFar):
    """The `dpe/platform_usage` asset for an environment: its pools are asked for the nodes alive
    now, which the ledger has no lifetime for yet (their busy time as `busy_so_far` reads it)."""

    @asset(key=PLATFORM_USAGE_KEY, group_name="dpe_platform", kinds={"python"},
           check_specs=[paid_spec(PLATFORM_USAGE_KEY)],
           description="Daily usage report from the ledger and the nodes alive now: paid vs attributed vs idle "
                       "per day, cost per asset and pool, what a 24x7 cluster sized for the same peak would "
                       "have cost, and each pool's p95 wait for room per day against its wait target.")
    def platform_usage(context: AssetExecutionContext, config: PlatformUsageConfig) -> MaterializeResult:
        if config.days < 1:
            raise ValueError(f"days: must be an integer >= 1; got {config.days}")
        now = time.time()
        window = Window(day_start(now) - (config.days - 1) * DAY, now)
        nodes, unread = report_nodes(context.instance, env, now, busy_so_far)
        for pool, error in unread.items():
            context.log.warning(f"pool {pool}: its live nodes are left out of this report: {error}")
        # Every pool's runs, those of pools no longer configured too (their target unknown).
        waits = waits_by_pool_day(read_waits_since(context.instance, window.since), wait_targets(env))
        report = build_report(read_usage(context.instance), nodes, window, waits)
        report["live_nodes_unread"] = unread
        folder = dpe_home() / "reports"
        stamp = time.strftime("%Y-%m-%d", time.gmtime(now))
        (folder / f"platform_usage-{stamp}.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"platform_usage-{stamp}.json").write_text(json.dumps(report, indent=2))
        days_covered = max(1e-9, report["always_on"]["hours"] / 24)
        chart = plot_days(report["days"], report["always_on"]["cost_usd"] / days_covered,
                          folder / f"platform_usage-{stamp}.png")
        return MaterializeResult(metadata={
            **{name: shown(name, report[name]) for name in ("paid_usd", "attributed_usd", "idle_usd")},
            "always_on_usd": shown("always_on_usd", report["always_on"]["cost_usd"]),
            "days": MetadataValue.md(_markdown(report["days"], ["day", "runs", "paid_usd", "attributed_usd",
                                                                "idle_usd"])),
            "assets": MetadataValue.json(report["assets"]),
            "pools": MetadataValue.md(_markdown(report["pools"], ["pool", "runs", "paid_usd", "attributed_usd",
                                                                  "idle_usd"])),
            "pool_days": MetadataValue.json(report["pool_days"]),
            "waits": MetadataValue.md(waits_table(waits)),
            "live_nodes_unread": MetadataValue.json(unread),
            "chart": MetadataValue.path(str(chart)),
            "report": MetadataValue.path(str(folder / f"platform_usage-{stamp}.json")),
        }, check_results=[paid_check(report["pool_days"])])

    return platform_usage


platform_usage_job = define_asset_job("platform_usage_report", selection=AssetSelection.assets(PLATFORM_USAGE_KEY))
platform_usage_daily = ScheduleDefinition(
    name="platform_usage_daily", job=platform_usage_job, cron_schedule="15 0 * * *", execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)
