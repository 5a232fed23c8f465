"""The TPC-H pipeline as one plain PySpark script: the same query code as the dpe assets
(`assets/tpch/queries.py`, called as plain functions), no Dagster instance, no daemon, no pool.

    .venv/bin/python bench/plain_tpch.py --scale-factor 1 --data-root bench/out/run_path/dpe/data/tpch
    .venv/bin/python bench/plain_tpch.py --scale-factor 1 --data-root ... --steps q3   # one step (Airflow task)

Prints one JSON line: seconds per step, SparkSession start, total.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

STARTED = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = ("tables", "q1", "q3", "q5", "q6")
# What dpe's local environment gives Spark: 2 cores, 2 x 1g of executor memory, 4 shuffle partitions.
DEFAULT_CONF = {"spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "4"}


class PlainSpark:
    """Stands in for dpe's SparkResource: `session()` returns one local SparkSession."""

    def __init__(self, master: str, conf: dict[str, str]):
        self.master = master
        self.conf = conf
        self._session = None
        self.start_s = 0.0

    def session(self):
        if self._session is None:
            started = time.perf_counter()
            from pyspark.sql import SparkSession

            builder = (SparkSession.builder.master(self.master).appName("plain-tpch")
                       .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                       .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC"))
            for key, value in self.conf.items():
                builder = builder.config(key, value)
            self._session = builder.getOrCreate()
            self.start_s = time.perf_counter() - started
        return self._session

    def stop(self):
        if self._session is not None:
            self._session.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TPC-H Q1/Q3/Q5/Q6 in one plain PySpark process")
    parser.add_argument("--scale-factor", type=float, required=True, help="TPC-H scale factor (> 0)")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding sf<N>/tables (as dpe's)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    args = parser.parse_args(argv)
    if args.scale_factor <= 0:
        parser.error("--scale-factor: must be > 0")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        parser.error(f"--steps: unknown step(s) {bad or '(none)'}; allowed: {', '.join(STEPS)}")
    conf = dict(DEFAULT_CONF)
    for item in args.conf:
        if "=" not in item:
            parser.error(f"--conf: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        conf[key] = value

    from assets.tpch.data import TpchData
    from assets.tpch.queries import QUERY_ASSETS, tpch_tables
    from dpe_dagster.spark.java import spark_process_env

    import os

    for key in ("JAVA_HOME", "SPARK_HOME", "SPARK_LOCAL_IP"):
        os.environ.setdefault(key, spark_process_env()[key])
    imported = time.time()
    tpch = TpchData(scale_factor=args.scale_factor, root=str(args.data_root))
    spark = PlainSpark(args.master, conf)
    # The asset bodies, without Dagster around them: same DataFrames, same cache/collect/write.
    # (unwrapped: decorators that need a live Dagster run, such as metering, stay out).
    body = lambda asset: inspect.unwrap(asset.op.compute_fn.decorated_fn)  # noqa: E731
    bodies = {"tables": lambda: body(tpch_tables)(tpch=tpch)}
    for asset in QUERY_ASSETS:
        name = asset.key.path[-1].removeprefix("tpch_")
        bodies[name] = (lambda fn: lambda: fn(context=None, spark=spark, tpch=tpch))(body(asset))
    seconds = {}
    try:
        for step in steps:
            started = time.perf_counter()
            bodies[step]()
            seconds[step] = time.perf_counter() - started
    finally:
        spark.stop()
    print(json.dumps({"steps": seconds, "session_start_s": spark.start_s, "import_s": imported - STARTED,
                      "total_s": time.time() - STARTED}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
