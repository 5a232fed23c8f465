"""Spark alone, no Dagster: the same four TPC-H queries (`bench/plain_tpch.py`) on `local[2]` and on
local Spark standalone pools of different node shapes, at each scale factor. This is what chose the
`local` environment's node shape (one 2-CPU worker per run rather than two 1-CPU workers).

    .venv/bin/python bench/spark_shapes.py --scale-factors 1,5
    .venv/bin/python bench/spark_shapes.py --scale-factors 1 --shapes 1x2,2x1,4x1

A shape WxC is W workers of C cores, each running one executor of C cores and C GiB. Per scale factor
the sides run one after the other in one session; the ratio is against `local[2]` of that session.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, machine, run_main, scale_factors, wait_for, write_report  # noqa: E402
from bench.run_path import plain_run  # noqa: E402

TIMEOUT_S = 1800  # one side's four queries


def parse_shape(text: str) -> tuple[int, int]:
    workers, _, cores = text.partition("x")
    if not (workers.isdigit() and cores.isdigit()) or int(workers) < 1 or int(cores) < 1:
        raise ValueError(text)
    return int(workers), int(cores)


def on_pool(data_root: Path, sf: float, workers: int, cores: int, state_dir: Path) -> dict:
    from dpe_dagster.config import parse_environment
    from dpe_dagster.pools import open_pool

    pool_raw = {"provider": "local", "min_size": 0, "max_size": workers, "node_cpus": cores,
                "node_memory_gb": cores + 0.5, "lifecycle": "spot", "price_per_node_hour": 0.01,
                "settings": {"state_dir": str(state_dir)}}
    env = parse_environment("local", {"pools": {"bench": pool_raw}})
    pool = open_pool(env.pools["bench"], env)
    try:
        pool.set_target(workers)
        wait_for(f"{workers} worker(s) to register",
                 lambda: sum(n.state == "running" for n in pool.nodes()) == workers, timeout_s=120, interval_s=0.5)
        return plain_run(data_root, sf, TIMEOUT_S, pool.master_url, {"spark.executor.memory": f"{cores}g",
                                                                     "spark.executor.cores": str(cores),
                                                                     "spark.cores.max": str(workers * cores)})
    finally:
        pool.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale-factors", default="1,5", help="comma-separated TPC-H scale factors (default 1,5)")
    parser.add_argument("--shapes", default="1x2,2x1", help="comma-separated WORKERSxCORES (default 1x2,2x1)")
    parser.add_argument("--out", type=Path, default=OUT / "spark_shapes", help="working folder")
    args = parser.parse_args(argv)
    factors = scale_factors(parser, args.scale_factors)
    try:
        shapes = [parse_shape(s.strip()) for s in args.shapes.split(",") if s.strip()]
    except ValueError as bad:
        parser.error(f"--shapes: {bad} is not WORKERSxCORES (e.g. 1x2); each at least 1")

    from assets.tpch.data import TpchData
    from dpe_dagster.spark.java import check_java

    check_java()
    print(f"machine: {machine()}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started, rows = time.time(), []
    for sf in factors:
        data_root = args.out / "data"
        print(f"sf {sf:g}: generating tables", flush=True)
        TpchData(scale_factor=sf, root=str(data_root)).generate()
        baseline = plain_run(data_root, sf, TIMEOUT_S)
        rows.append({"scale_factor": sf, "side": "local[2]", **baseline, "ratio": 1.0})
        print(f"sf {sf:g} local[2]: {baseline['wall_s']:.1f} s", flush=True)
        for workers, cores in shapes:
            with tempfile.TemporaryDirectory() as state:
                result = on_pool(data_root, sf, workers, cores, Path(state))
            ratio = result["wall_s"] / baseline["wall_s"]
            rows.append({"scale_factor": sf, "side": f"{workers}x{cores}", **result, "ratio": ratio})
            print(f"sf {sf:g} {workers} worker(s) x {cores} core(s): {result['wall_s']:.1f} s ({ratio:.2f}x)", flush=True)
    print("\n| sf | side | wall s | ratio vs local[2] | Q1 s | Q3 s | Q5 s | Q6 s |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        steps = row["steps"]
        print(f"| {row['scale_factor']:g} | {row['side']} | {row['wall_s']:.1f} | {row['ratio']:.2f} | "
              + " | ".join(f"{steps[q]:.1f}" for q in ("q1", "q3", "q5", "q6")) + " |")
    print(f"results: {write_report(args.out, 'spark_shapes', started, rows=rows)}")
    return 0


if __name__ == "__main__":
    run_main("spark_shapes", main)
