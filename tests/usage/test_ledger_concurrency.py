"""Two ledger writers at once on PostgreSQL (two daemons' sensors, say) neither lose nor double a record."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

from dagster import asset, instance_for_test, materialize

from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import read_run_usage
from tests.support.postgres import postgres_or_skip

WRITER = textwrap.dedent("""
    import sys
    from dagster import DagsterInstance, build_sensor_context
    from dpe_dagster.config import parse_environment
    from dpe_dagster.usage.sensor import build_ledger_sensor

    env = parse_environment("local", {"pools": {"spot-etl": {
        "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 0.36,
        "settings": {"state_dir": sys.argv[2]}}}})
    instance = DagsterInstance.from_config(sys.argv[1])
    for _ in range(3):
        build_ledger_sensor(env)(build_sensor_context(instance=instance, cursor=None))
""")


@asset
def step():
    return 1


def test_two_concurrent_writers_write_each_record_once(tmp_path):
    url = postgres_or_skip()
    home = tmp_path / "dagster"
    home.mkdir()
    with instance_for_test(temp_dir=str(home), overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        instance.wipe()
        try:
            runs = [materialize([step], instance=instance, tags=pool_tags("spot-etl", cpus=1)).run_id for _ in range(8)]
            writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(tmp_path / "pool")])
                       for _ in range(2)]
            assert [w.wait(timeout=300) for w in writers] == [0, 0]
            counts = Counter(r.run_id for r in read_run_usage(instance))
            assert set(counts) == set(runs), "no record lost"
            assert set(counts.values()) == {1}, f"records doubled: {counts}"
        finally:
            instance.wipe()
