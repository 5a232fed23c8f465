"""The dpe TPC-H pipeline as an Apache Airflow 3 DAG: the same steps, the same PySpark code.

Each task runs `bench/plain_tpch.py --steps <step>` with dpe's Python, so it executes exactly the
asset bodies of `assets/tpch/queries.py`. As usual in Airflow, every task is its own process, so
every Spark task starts its own SparkSession (JVM); the tasks run in dpe's order, one after another.
`bench/airflow_peer.py` sets DPE_BENCH_PYTHON, DPE_BENCH_SF and DPE_BENCH_DATA.
"""

import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("DPE_BENCH_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
SCALE_FACTOR = os.environ.get("DPE_BENCH_SF", "0.01")
DATA = os.environ.get("DPE_BENCH_DATA", str(ROOT / "bench" / "out" / "run_path" / "dpe" / "data" / "tpch"))

with DAG(
    dag_id="tpch_airflow",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["dpe-bench"],
) as dag:
    previous = None
    for step in ("tables", "q1", "q3", "q5", "q6"):
        task = BashOperator(
            task_id=f"tpch_{step}",
            bash_command=f"{PYTHON} {ROOT / 'bench' / 'plain_tpch.py'} --scale-factor {SCALE_FACTOR} "
                         f"--data-root {DATA} --steps {step}",
            cwd=str(ROOT),
        )
        if previous is not None:
            previous >> task
        previous = task
